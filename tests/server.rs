//! Integration tests against the real server on 127.0.0.1:0, in process, with
//! a custom channel kind written against the public `Channel` trait.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice::channel::{Channel, ChannelError, ChannelHandle, ChannelKind, JoinError, Outcome};
use sluice::config::{Config, SlowConsumerPolicy};
use sluice::protocol::{Payload, Topic};
use sluice::router::RouteSpec;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "integration-test-secret-key-base-0123456789";
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A channel kind whose behaviour the client picks by event name.
struct Scripted;

impl ChannelKind for Scripted {
    fn create(&self, _topic: &Topic) -> Box<dyn Channel> {
        Box::new(ScriptedChannel)
    }
}

struct ScriptedChannel;

/// A kind whose factory panics: the join must fail cleanly.
struct Exploding;

impl ChannelKind for Exploding {
    fn create(&self, _topic: &Topic) -> Box<dyn Channel> {
        panic!("factory panics")
    }
}

#[async_trait::async_trait]
impl Channel for ScriptedChannel {
    async fn join(&mut self, ch: &ChannelHandle, _payload: Payload) -> Result<Payload, JoinError> {
        match ch.topic().as_str() {
            "scripted:refuse" => Err(JoinError::Refused(Payload::json(
                &json!({"reason": "nope"}),
            ))),
            "scripted:joinpanic" => panic!("join panics"),
            t => Ok(Payload::json(&json!({ "joined": t }))),
        }
    }

    async fn handle_in(
        &mut self,
        ch: &ChannelHandle,
        event: &str,
        payload: Payload,
    ) -> Result<Outcome, ChannelError> {
        match event {
            "status" => Ok(Outcome::Reply {
                status: "not_found".into(),
                response: payload,
            }),
            "crash" => Err(ChannelError("asked to".into())),
            "panic" => panic!("asked to panic"),
            "stop" => Ok(Outcome::Stop {
                reply: Some(("ok".into(), Payload::empty())),
            }),
            "push" => {
                ch.push("pushed", &payload);
                Ok(Outcome::NoReply)
            }
            "push_then_stop" => {
                ch.push("last words", &payload);
                Ok(Outcome::Stop { reply: None })
            }
            _ => Ok(Outcome::ok(payload)),
        }
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), sluice::Error>>,
}

async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    for route in [
        "scripted:*=scripted/authenticated",
        "boom:*=exploding/authenticated",
    ] {
        config.routes.push(RouteSpec::parse(route).unwrap());
    }
    config.drain_grace = Duration::from_secs(5);
    let scratch = std::env::temp_dir().join(format!("sluice-it-{}", std::process::id()));
    config.files_dir = scratch.join("files");
    config.uploads_dir = scratch.join("uploads");
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let server = sluice::Sluice::new(config)
        .unwrap()
        .channel_kind("scripted", Arc::new(Scripted))
        .channel_kind("exploding", Arc::new(Exploding))
        .secrets(SECRET, "api-key");
    let task = tokio::spawn(server.run(listener, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

impl Server {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server drains in time")
            .expect("server task")
            .expect("server result");
    }
}

fn token(user: i128) -> String {
    let key = sluice::token::Key::derive(SECRET.as_bytes(), b"user socket");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    sluice::token::sign(
        &key,
        &sluice::token::Term::Int(user),
        now,
        sluice::token::MaxAge::Seconds(3600),
    )
}

async fn connect(addr: SocketAddr) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&token={}", token(42));
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string())).await.unwrap();
}

/// Next text message as JSON (binary frames and pings are skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("unexpected close {c:?}"),
            _ => continue,
        }
    }
}

/// Read until the close frame; returns its code and how many data frames came before it.
async fn read_until_close(ws: &mut Ws) -> (Option<CloseCode>, usize) {
    let mut frames = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("close in time");
        match next {
            Some(Ok(Message::Close(c))) => return (c.map(|c| c.code), frames),
            Some(Ok(Message::Text(_) | Message::Binary(_))) => frames += 1,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (None, frames),
        }
    }
}

#[tokio::test]
async fn custom_channel_lifecycle_follows_phoenix() {
    let server = start(|_| {}).await;
    let mut ws = connect(server.addr).await;

    send(&mut ws, json!(["1", "1", "scripted:a", "phx_join", {}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["1", "1", "scripted:a", "phx_reply", {"response": {"joined": "scripted:a"}, "status": "ok"}])
    );
    // A free-form status word.
    send(&mut ws, json!(["1", "2", "scripted:a", "status", {"x": 1}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["1", "2", "scripted:a", "phx_reply", {"response": {"x": 1}, "status": "not_found"}])
    );
    // A channel push carries the join_ref and a null ref.
    send(&mut ws, json!(["1", "3", "scripted:a", "push", {"y": 2}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["1", null, "scripted:a", "pushed", {"y": 2}])
    );
    // An error is a crash: phx_error with join_ref = ref = the join's ref.
    send(&mut ws, json!(["1", "4", "scripted:a", "crash", {}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["1", "1", "scripted:a", "phx_error", {"reason": "channel_crash"}])
    );
    // The crashed channel is gone: the topic is unmatched until rejoined.
    send(&mut ws, json!(["1", "5", "scripted:a", "echo", {}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!([null, "5", "scripted:a", "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}])
    );
    // A panic is a crash of that channel only.
    send(&mut ws, json!(["6", "6", "scripted:a", "phx_join", {}])).await;
    next_json(&mut ws).await;
    send(&mut ws, json!(["6", "7", "scripted:a", "panic", {}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["6", "6", "scripted:a", "phx_error", {"reason": "channel_crash"}])
    );
    // Stop: the reply, then phx_close.
    send(&mut ws, json!(["8", "8", "scripted:a", "phx_join", {}])).await;
    next_json(&mut ws).await;
    send(&mut ws, json!(["8", "9", "scripted:a", "stop", {}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["8", "9", "scripted:a", "phx_reply", {"response": {}, "status": "ok"}])
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!(["8", "8", "scripted:a", "phx_close", {}])
    );
    // A push made right before stopping reaches the client before phx_close.
    send(&mut ws, json!(["13", "13", "scripted:a", "phx_join", {}])).await;
    next_json(&mut ws).await;
    send(
        &mut ws,
        json!(["13", "14", "scripted:a", "push_then_stop", {"z": 3}]),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["13", null, "scripted:a", "last words", {"z": 3}])
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!(["13", "13", "scripted:a", "phx_close", {}])
    );
    // WebSocket pings are answered with the same payload.
    ws.send(Message::Ping(b"abc".to_vec())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Pong(p) = msg {
            assert_eq!(p, b"abc");
            break;
        }
    }
    // Refused and panicking joins.
    send(
        &mut ws,
        json!(["10", "10", "scripted:refuse", "phx_join", {}]),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["10", "10", "scripted:refuse", "phx_reply", {"response": {"reason": "nope"}, "status": "error"}])
    );
    send(
        &mut ws,
        json!(["11", "11", "scripted:joinpanic", "phx_join", {}]),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["11", "11", "scripted:joinpanic", "phx_reply", {"response": {"reason": "join crashed"}, "status": "error"}])
    );
    send(&mut ws, json!(["12", "12", "boom:1", "phx_join", {}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!(["12", "12", "boom:1", "phx_reply", {"response": {"reason": "join crashed"}, "status": "error"}])
    );
    // The socket survived all of it.
    send(&mut ws, json!([null, "12", "phoenix", "heartbeat", {}])).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!([null, "12", "phoenix", "phx_reply", {"response": {}, "status": "ok"}])
    );
    server.stop().await;
}

#[tokio::test]
async fn drain_closes_sockets_with_1012_and_returns() {
    let server = start(|_| {}).await;
    let mut a = connect(server.addr).await;
    let mut b = connect(server.addr).await;
    send(&mut a, json!(["1", "1", "room:drain", "phx_join", {}])).await;
    next_json(&mut a).await;
    send(&mut b, json!([null, "1", "phoenix", "heartbeat", {}])).await;
    next_json(&mut b).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(read_until_close(&mut a).await.0, Some(CloseCode::Restart));
    assert_eq!(read_until_close(&mut b).await.0, Some(CloseCode::Restart));
    drop((a, b));
    stopping.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener is closed after the drain"
    );
}

/// Subscriber `slow` stops reading while `fast` floods the room; returns what
/// `slow` then reads before its close (or before a heartbeat reply for `drop`).
async fn flood(policy: SlowConsumerPolicy) -> (Option<CloseCode>, usize, usize) {
    let server = start(|c| {
        c.outbound_queue_bytes = 256 * 1024;
        c.slow_consumer = policy;
    })
    .await;
    let mut slow = connect(server.addr).await;
    send(&mut slow, json!(["1", "1", "room:flood", "phx_join", {}])).await;
    next_json(&mut slow).await;
    let mut fast = connect(server.addr).await;
    send(&mut fast, json!(["1", "1", "room:flood", "phx_join", {}])).await;
    next_json(&mut fast).await;
    let (mut tx, mut rx) = fast.split();
    const N: usize = 1500;
    let (got_tx, mut got_rx) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            match tokio::time::timeout(Duration::from_secs(20), rx.next()).await {
                Ok(Some(Ok(Message::Binary(_)))) => {
                    got += 1;
                    let _ = got_tx.send(got);
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        got
    });
    // 1500 × 32 KiB = 48 MiB through the room: far more than the kernel's
    // socket buffers plus the 256 KiB queue can hold for the slow reader. The
    // publisher keeps at most 4 frames ahead of the fast subscriber, so only
    // the slow one is ever behind.
    let mut frame = vec![0u8, 1, 1, 10, 5, b'1', b'2'];
    frame.extend_from_slice(b"room:flood");
    frame.extend_from_slice(b"chunk");
    frame.extend(std::iter::repeat_n(7u8, 32 * 1024));
    for sent in 0..N {
        if got_rx.wait_for(|got| got + 4 >= sent).await.is_err() {
            break;
        }
        tx.send(Message::Binary(frame.clone())).await.unwrap();
    }
    let fast_got = reader.await.unwrap();
    let result = match policy {
        SlowConsumerPolicy::Disconnect => {
            let (code, frames) = read_until_close(&mut slow).await;
            (code, frames, fast_got)
        }
        SlowConsumerPolicy::Drop => {
            send(&mut slow, json!([null, "99", "phoenix", "heartbeat", {}])).await;
            let mut frames = 0;
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(20), slow.next())
                    .await
                    .expect("message in time")
                    .expect("open")
                    .expect("ok");
                match msg {
                    Message::Binary(_) => frames += 1,
                    Message::Text(t) if t.contains("\"99\"") => break,
                    Message::Close(c) => panic!("drop policy must not close: {c:?}"),
                    _ => {}
                }
            }
            (None, frames, fast_got)
        }
    };
    server.stop().await;
    result
}

#[tokio::test]
async fn slow_consumer_is_disconnected_with_1013_and_others_are_unaffected() {
    let (code, frames, fast_got) = flood(SlowConsumerPolicy::Disconnect).await;
    assert_eq!(
        code,
        Some(CloseCode::Again),
        "slow consumer closed with 1013"
    );
    assert!(
        frames < 1500,
        "the slow reader did not get everything ({frames})"
    );
    assert_eq!(fast_got, 1500, "the fast subscriber got every broadcast");
}

#[tokio::test]
async fn slow_consumer_drop_policy_drops_but_keeps_the_socket() {
    let (_, frames, fast_got) = flood(SlowConsumerPolicy::Drop).await;
    assert!(
        frames < 1500,
        "some broadcasts were dropped for the slow reader ({frames})"
    );
    assert!(frames > 0, "the slow reader still got what fit");
    assert_eq!(fast_got, 1500, "the fast subscriber got every broadcast");
}
