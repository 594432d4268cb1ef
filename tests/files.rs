//! Integration tests of the files channel's scheduling guarantees, in
//! process on 127.0.0.1:0: the socket answers while a digest is computed,
//! the reply precedes the chunks, replies and pushes overtake a running download, concurrent downloads on one socket
//! interleave, and cancel/leave stop a stream.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sluice::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "integration-test-secret-key-base-0123456789";
const API_KEY: &str = "files-api-key";
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Server {
    addr: SocketAddr,
    dir: PathBuf,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sluice::Error>>,
}

/// A file of `len` bytes that is not all the same byte.
fn content(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn start(tag: &str, files: &[(&str, usize)]) -> (Server, Vec<Vec<u8>>) {
    start_with(tag, files, |_| {}).await
}

async fn start_with(
    tag: &str,
    files: &[(&str, usize)],
    tweak: impl FnOnce(&mut Config),
) -> (Server, Vec<Vec<u8>>) {
    let dir = std::env::temp_dir().join(format!("sluice-files-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let mut contents = Vec::new();
    for (name, len) in files {
        let data = content(*len);
        std::fs::write(dir.join("files").join(name), &data).unwrap();
        contents.push(data);
    }
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.files_dir = dir.join("files");
    config.uploads_dir = dir.join("uploads");
    config.file_settle = Duration::ZERO;
    config.drain_grace = Duration::from_secs(5);
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let server = sluice::Sluice::new(config)
        .unwrap()
        .secrets(SECRET, API_KEY);
    let task = tokio::spawn(server.run(listener, async move {
        let _ = rx.await;
    }));
    (
        Server {
            addr,
            dir,
            stop,
            task,
        },
        contents,
    )
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server drains in time")
            .expect("server task")
            .expect("server result");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn token() -> String {
    let key = sluice::token::Key::derive(SECRET.as_bytes(), b"user socket");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    sluice::token::sign(
        &key,
        &sluice::token::Term::Int(7),
        now,
        sluice::token::MaxAge::Seconds(3600),
    )
}

async fn connect(addr: SocketAddr) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&token={}", token());
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string())).await.unwrap();
}

/// One server message: JSON text, or a binary (kind 0) push `(topic, event, payload)`.
#[derive(Debug)]
enum In {
    Json(Value),
    Push(String, String, Vec<u8>),
}

async fn next(ws: &mut Ws) -> In {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no error");
        match msg {
            Message::Text(t) => return In::Json(serde_json::from_str(&t).unwrap()),
            Message::Binary(b) => {
                assert_eq!(b[0], 0, "a kind-0 push");
                let (jl, tl, el) = (b[1] as usize, b[2] as usize, b[3] as usize);
                let topic = String::from_utf8(b[4 + jl..4 + jl + tl].to_vec()).unwrap();
                let event = String::from_utf8(b[4 + jl + tl..4 + jl + tl + el].to_vec()).unwrap();
                return In::Push(topic, event, b[4 + jl + tl + el..].to_vec());
            }
            Message::Close(c) => panic!("unexpected close {c:?}"),
            _ => continue,
        }
    }
}

async fn join(ws: &mut Ws, topic: &str, join_ref: &str) {
    send(ws, json!([join_ref, join_ref, topic, "phx_join", {}])).await;
    match next(ws).await {
        In::Json(v) => assert_eq!(v[4]["status"], "ok", "{v}"),
        other => panic!("expected the join reply, got {other:?}"),
    }
}

/// POST /api/broadcast with a plain HTTP/1.1 request; returns the status line.
async fn api_broadcast(addr: SocketAddr, topic: &str, event: &str) -> String {
    let body = json!({"topic": topic, "event": event, "payload": {"n": 1}}).to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /api/broadcast HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn reply_first_then_replies_and_pushes_overtake_a_paused_download() {
    let size = 64 << 20;
    let (server, contents) = start("overtake", &[("big.bin", size)]).await;
    let mut ws = connect(server.addr).await;
    join(&mut ws, "files:a", "1").await;
    send(
        &mut ws,
        json!(["1", "2", "files:a", "download", {"file": "big.bin", "chunk_size": 262144}]),
    )
    .await;
    // The digest of a new file is computed off the session: a heartbeat sent
    // right after the request is answered before the download's reply.
    send(&mut ws, json!([null, "hb0", "phoenix", "heartbeat", {}])).await;
    match next(&mut ws).await {
        In::Json(v) => assert_eq!(v[1], "hb0", "heartbeat answered first: {v}"),
        other => panic!("expected the heartbeat reply, got {other:?}"),
    }
    // The reply always precedes the chunks.
    let meta = match next(&mut ws).await {
        In::Json(v) => v,
        other => panic!("the reply must precede the chunks, got {other:?}"),
    };
    assert_eq!(meta[1], "2");
    let meta = &meta[4]["response"];
    assert_eq!(meta["size"], size);
    assert_eq!(meta["chunks"], 256);
    assert_eq!(meta["first_chunk"], 0);
    let expected_sha = format!("{:x}", Sha256::digest(&contents[0]));
    assert_eq!(meta["sha256"], expected_sha.as_str());

    let mut received = Vec::with_capacity(size);
    let mut next_index = 0u32;
    let mut take_chunk = |payload: Vec<u8>, received: &mut Vec<u8>| {
        let index = u32::from_be_bytes(payload[..4].try_into().unwrap());
        assert_eq!(index, next_index, "chunks in order");
        next_index += 1;
        received.extend_from_slice(&payload[4..]);
    };
    for _ in 0..2 {
        match next(&mut ws).await {
            In::Push(_, e, p) if e == "new chunk" => take_chunk(p, &mut received),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }
    // Stop reading: the server's writer blocks on a full socket. Meanwhile a
    // heartbeat (control lane) and a broadcast (bulk lane) are queued.
    send(&mut ws, json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(api_broadcast(server.addr, "files:a", "tick")
        .await
        .contains("200"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paused_at = received.len();
    let (mut heartbeat_at, mut tick_at, mut complete) = (None, None, None);
    while complete.is_none() {
        match next(&mut ws).await {
            In::Push(_, e, p) if e == "new chunk" => take_chunk(p, &mut received),
            In::Json(v) if v[1] == "hb" => heartbeat_at = Some(received.len()),
            In::Json(v) if v[3] == "tick" => tick_at = Some(received.len()),
            In::Json(v) if v[3] == "image complete" => complete = Some(v),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Both overtook the download: they arrived after at most what was
    // already in flight (socket buffers + one writer batch), far from the end.
    let in_flight = 24 << 20;
    let hb = heartbeat_at.expect("heartbeat reply");
    let tick = tick_at.expect("broadcast");
    assert!(
        hb - paused_at < in_flight,
        "heartbeat after {} bytes",
        hb - paused_at
    );
    assert!(
        tick - paused_at < in_flight,
        "broadcast after {} bytes",
        tick - paused_at
    );
    assert_eq!(received.len(), size);
    assert!(received == contents[0], "byte-identical");
    assert_eq!(complete.unwrap()[4]["sha256"], expected_sha.as_str());
    server.stop().await;
}

#[tokio::test]
async fn two_downloads_on_one_socket_interleave_and_cancel_and_leave_stop_streams() {
    let size = 64 << 20;
    let (server, _) = start("fair", &[("a.bin", size), ("b.bin", size)]).await;
    let mut ws = connect(server.addr).await;
    join(&mut ws, "files:a", "1").await;
    join(&mut ws, "files:b", "2").await;
    let download = |jr: &str, topic: &str, file: &str, offset: usize| json!([jr, "d", topic, "download", {"file": file, "chunk_size": 65536, "offset": offset}]);
    // Digests are computed once per file; warm them with empty downloads
    // (offset = size) so both streams below start at the same time.
    for (jr, topic, file) in [("1", "files:a", "a.bin"), ("2", "files:b", "b.bin")] {
        send(&mut ws, download(jr, topic, file, size)).await;
        let mut done = 0;
        while done < 2 {
            match next(&mut ws).await {
                In::Json(v) if v[3] == "phx_reply" || v[3] == "image complete" => done += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    send(&mut ws, download("1", "files:a", "a.bin", 0)).await;
    send(&mut ws, download("2", "files:b", "b.bin", 0)).await;
    // Let the socket fill so that both streams are attached when we read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut a, mut b) = (0, 0);
    loop {
        match next(&mut ws).await {
            In::Json(v) if v[3] == "phx_reply" => {}
            In::Json(v) if v[3] == "image complete" => break,
            In::Push(t, e, _) if e == "new chunk" => {
                if t == "files:a" {
                    a += 1
                } else {
                    b += 1
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // 1024 chunks each: when the first stream ends, the other one has had
    // its round-robin share (minus what the first had queued before it began).
    assert!(a.min(b) >= 768, "round-robin share: a={a} b={b}");
    loop {
        if let In::Json(v) = next(&mut ws).await {
            if v[3] == "image complete" {
                break;
            }
        }
    }
    // cancel {} on files:a, leave files:b: both streams stop, no `image complete`.
    send(&mut ws, download("1", "files:a", "a.bin", 0)).await;
    send(&mut ws, download("2", "files:b", "b.bin", 0)).await;
    let mut chunks = 0;
    while chunks < 8 {
        if let In::Push(..) = next(&mut ws).await {
            chunks += 1;
        }
    }
    send(&mut ws, json!(["1", "c", "files:a", "cancel", {}])).await;
    send(&mut ws, json!(["2", "l", "files:b", "phx_leave", {}])).await;
    let mut cancelled = None;
    loop {
        match next(&mut ws).await {
            In::Json(v) if v[1] == "c" => cancelled = Some(v[4]["response"]["cancelled"].clone()),
            In::Json(v) if v[3] == "phx_close" => break,
            In::Json(v) if v[3] == "image complete" => panic!("stream was not stopped: {v}"),
            _ => {}
        }
    }
    assert_eq!(cancelled, Some(json!(1)));
    // The socket is quiet afterwards except for what answers us.
    send(&mut ws, json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    loop {
        match next(&mut ws).await {
            In::Json(v) if v[1] == "hb" => break,
            In::Json(v) if v[3] == "image complete" => panic!("stream was not stopped: {v}"),
            _ => {}
        }
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(quiet.is_err(), "no more frames: {quiet:?}");
    server.stop().await;
}

/// A kind-0 client push with a binary payload (V2 binary serializer).
fn binary_push(join_ref: &str, ref_: &str, topic: &str, event: &str, data: &[u8]) -> Vec<u8> {
    let mut f = vec![
        0u8,
        join_ref.len() as u8,
        ref_.len() as u8,
        topic.len() as u8,
        event.len() as u8,
    ];
    for s in [join_ref, ref_, topic, event] {
        f.extend_from_slice(s.as_bytes());
    }
    f.extend_from_slice(data);
    f
}

#[tokio::test]
async fn pipelined_upload_acks_come_back_in_push_order() {
    let (server, _) = start("acks", &[]).await;
    let mut ws = connect(server.addr).await;
    join(&mut ws, "files:up", "1").await;
    let data = content(4 << 20);
    let sha = format!("{:x}", Sha256::digest(&data));
    send(
        &mut ws,
        json!(["1", "s", "files:up", "upload:start", {"name": "acks.bin", "size": data.len(), "sha256": sha}]),
    )
    .await;
    let start = match next(&mut ws).await {
        In::Json(v) => v[4]["response"].clone(),
        other => panic!("expected the start reply, got {other:?}"),
    };
    assert_eq!(start["offset"], 0);
    // 1024 chunks of 4 KiB, all sent before reading any reply (within the window).
    for (i, chunk) in data.chunks(4096).enumerate() {
        let frame = binary_push("1", &format!("c{i}"), "files:up", "chunk", chunk);
        ws.send(Message::Binary(frame)).await.unwrap();
    }
    for i in 0..1024usize {
        match next(&mut ws).await {
            In::Json(v) => {
                assert_eq!(v[1], format!("c{i}").as_str(), "replies in push order");
                assert_eq!(v[4]["response"]["offset"], (i + 1) * 4096);
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }
    send(
        &mut ws,
        json!(["1", "f", "files:up", "upload:finish", {"upload_id": start["upload_id"]}]),
    )
    .await;
    match next(&mut ws).await {
        In::Json(v) => {
            assert_eq!(v[4]["status"], "ok", "{v}");
            assert_eq!(v[4]["response"]["sha256"], sha.as_str());
        }
        other => panic!("expected the finish reply, got {other:?}"),
    }
    let stored = std::fs::read(server.dir.join("uploads/7/acks.bin")).unwrap();
    assert!(stored == data, "byte-identical");
    server.stop().await;
}

#[tokio::test]
async fn stream_limit_counts_downloads_waiting_for_their_digest_and_restarts_replace() {
    let (server, _) = start_with("limit", &[("a.bin", 32 << 20), ("b.bin", 32 << 20)], |c| {
        c.max_streams_per_socket = 2;
    })
    .await;
    let mut ws = connect(server.addr).await;
    for (i, topic) in ["files:1", "files:2", "files:3"].iter().enumerate() {
        join(&mut ws, topic, &format!("{i}")).await;
    }
    // The same file asked twice on one channel before its digest is known,
    // then a third stream on another channel: the restart replaces the first
    // request (one stream, one `image complete`), the third exceeds the limit
    // of 2 only if pending downloads count.
    send(
        &mut ws,
        json!(["0", "a1", "files:1", "download", {"file": "a.bin"}]),
    )
    .await;
    send(
        &mut ws,
        json!(["0", "a2", "files:1", "download", {"file": "a.bin"}]),
    )
    .await;
    send(
        &mut ws,
        json!(["1", "b", "files:2", "download", {"file": "b.bin"}]),
    )
    .await;
    send(
        &mut ws,
        json!(["2", "c", "files:3", "download", {"file": "b.bin"}]),
    )
    .await;
    let mut replies = std::collections::HashMap::new();
    let mut completes = Vec::new();
    while completes.len() < 2 {
        match next(&mut ws).await {
            In::Json(v) if v[3] == "phx_reply" => {
                replies.insert(v[1].as_str().unwrap().to_owned(), v[4].clone());
            }
            In::Json(v) if v[3] == "image complete" => completes.push(v[2].clone()),
            In::Json(v) => panic!("unexpected {v}"),
            In::Push(..) => {}
        }
    }
    assert_eq!(
        replies["c"]["response"]["reason"], "too_many_streams",
        "{replies:?}"
    );
    assert_eq!(replies["b"]["status"], "ok");
    assert_eq!(replies["a2"]["status"], "ok");
    completes.sort_by_key(|t| t.to_string());
    assert_eq!(
        completes,
        vec![json!("files:1"), json!("files:2")],
        "one stream per request that survived"
    );
    // Nothing else arrives: the replaced request never started its stream.
    send(&mut ws, json!([null, "hb", "phoenix", "heartbeat", {}])).await;
    loop {
        match next(&mut ws).await {
            In::Json(v) if v[1] == "hb" => break,
            In::Json(v) if v[3] == "image complete" => panic!("a third stream ran: {v}"),
            _ => {}
        }
    }
    // Slots are released when streams end: a new download is accepted.
    send(
        &mut ws,
        json!(["2", "c2", "files:3", "download", {"file": "b.bin", "offset": 32 << 20}]),
    )
    .await;
    match next(&mut ws).await {
        In::Json(v) => assert_eq!(v[4]["status"], "ok", "{v}"),
        other => panic!("unexpected {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_chunk_after_finish_is_refused_not_appended_to_an_implicit_file() {
    let (server, _) = start("stray", &[]).await;
    let mut ws = connect(server.addr).await;
    join(&mut ws, "files:up", "1").await;
    send(
        &mut ws,
        json!(["1", "s", "files:up", "upload:start", {"name": "one.bin", "size": 3}]),
    )
    .await;
    let start = match next(&mut ws).await {
        In::Json(v) => v[4]["response"].clone(),
        other => panic!("unexpected {other:?}"),
    };
    let frame = binary_push("1", "c", "files:up", "chunk", b"abc");
    ws.send(Message::Binary(frame)).await.unwrap();
    send(
        &mut ws,
        json!(["1", "f", "files:up", "upload:finish", {"upload_id": start["upload_id"]}]),
    )
    .await;
    let frame = binary_push("1", "x", "files:up", "chunk", b"stray");
    ws.send(Message::Binary(frame)).await.unwrap();
    let mut got = std::collections::HashMap::new();
    let mut order = Vec::new();
    while got.len() < 3 {
        if let In::Json(v) = next(&mut ws).await {
            order.push(v[1].as_str().unwrap().to_owned());
            got.insert(v[1].as_str().unwrap().to_owned(), v[4].clone());
        }
    }
    // The immediate `no_upload` reply waits behind the deferred finish ack.
    assert_eq!(order, vec!["c", "f", "x"], "replies in push order");
    assert_eq!(got["c"]["response"]["offset"], 3);
    assert_eq!(got["f"]["status"], "ok");
    assert_eq!(got["x"]["response"]["reason"], "no_upload");
    let user_dir = server.dir.join("uploads/7");
    let mut names: Vec<_> = std::fs::read_dir(&user_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names, vec!["one.bin"], "no implicit files-up.bin");
    server.stop().await;
}
