//! Runs the scenarios through the library API against the real Sluice
//! server, in process on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice::channel::{Channel, ChannelError, ChannelHandle, ChannelKind, Outcome};
use sluice::config::Config;
use sluice::protocol::{Payload, Topic};
use sluice::router::RouteSpec;
use sluice_load::{BroadcastArgs, Common, EchoArgs, Scenario};
use tokio::sync::oneshot;

const SECRET: &str = "loadtest-smoke-secret-key-base-0123456789";

struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sluice::Error>>,
}

/// A channel that accepts every join and never answers a push.
struct Silent;

impl ChannelKind for Silent {
    fn create(&self, _topic: &Topic) -> Box<dyn Channel> {
        Box::new(Silent)
    }
}

#[async_trait::async_trait]
impl Channel for Silent {
    async fn handle_in(
        &mut self,
        _ch: &ChannelHandle,
        _event: &str,
        _payload: Payload,
    ) -> Result<Outcome, ChannelError> {
        Ok(Outcome::NoReply)
    }
}

async fn start() -> Server {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().unwrap();
    // Never the default `var/` dirs (they would be created in the source tree).
    let scratch = std::env::temp_dir().join(format!("sluice-load-smoke-{}", std::process::id()));
    config.files_dir = scratch.join("files");
    config.uploads_dir = scratch.join("uploads");
    config.drain_grace = Duration::from_secs(5);
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let server = sluice::Sluice::new(config)
        .unwrap()
        .channel_kind("silent", Arc::new(Silent))
        .secrets(SECRET, "api-key");
    let task = tokio::spawn(server.run(listener, async move {
        let _ = rx.await;
    }));
    Server { addr, stop, task }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server drains in time")
            .expect("server task")
            .expect("server result");
    }
}

fn common(addr: SocketAddr, connections: usize) -> Common {
    let mut c = Common::with_url(&format!("ws://{addr}/socket/websocket"));
    c.secret_key_base = Some(SECRET.to_owned());
    c.connections = connections;
    c.duration = Duration::from_secs(1);
    c.warmup = Duration::from_millis(200);
    c.timeout = Duration::from_secs(2);
    c
}

/// The JSON summary, with the checks every scenario must pass.
fn check(summary: &sluice_load::Summary) -> Value {
    let v: Value = serde_json::from_str(&summary.to_json()).expect("summary is JSON");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["timeouts"], 0, "{v}");
    assert!(v["received"].as_u64().unwrap() > 0, "{v}");
    assert!(v["rate"].as_f64().unwrap() > 0.0, "{v}");
    let latency = &v["latency_us"];
    for field in ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(latency[field].is_number(), "latency_us.{field} in {v}");
    }
    assert!(latency["p50"].as_u64() <= latency["max"].as_u64(), "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_broadcast_against_sluice() {
    let server = start().await;

    let started = std::time::Instant::now();
    let echo = Scenario::Echo(EchoArgs {
        window: 2,
        ..EchoArgs::default()
    });
    let summary = sluice_load::run(&common(server.addr, 2), &echo)
        .await
        .expect("echo runs");
    let v = check(&summary);
    assert_eq!(v["scenario"], "echo");
    assert_eq!(v["connections"]["established"], 2);
    assert_eq!(v["sent"], v["received"], "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "echo is bounded in time"
    );

    let binary = Scenario::Echo(EchoArgs {
        size: 1024,
        binary: true,
        ..EchoArgs::default()
    });
    let summary = sluice_load::run(&common(server.addr, 1), &binary)
        .await
        .expect("binary echo runs");
    assert_eq!(check(&summary)["params"]["encoding"], "binary");

    let broadcast = Scenario::Broadcast(BroadcastArgs {
        rate: 200,
        ..BroadcastArgs::default()
    });
    let started = std::time::Instant::now();
    let summary = sluice_load::run(&common(server.addr, 3), &broadcast)
        .await
        .expect("broadcast runs");
    let v = check(&summary);
    assert_eq!(v["scenario"], "broadcast");
    assert_eq!(
        v["connections"]["established"], 4,
        "3 subscribers + the publisher"
    );
    // 200 msgs/s for 1 s, each delivered to all 3 subscribers.
    let sent = v["sent"].as_u64().unwrap();
    assert!((190..=210).contains(&sent), "{v}");
    assert_eq!(v["expected"].as_u64(), Some(sent * 3), "{v}");
    assert_eq!(v["received"], v["expected"], "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "broadcast is bounded in time"
    );

    let flat_out = Scenario::Broadcast(BroadcastArgs {
        rate: 0,
        binary: true,
        ..BroadcastArgs::default()
    });
    let summary = sluice_load::run(&common(server.addr, 3), &flat_out)
        .await
        .expect("flat-out broadcast runs");
    check(&summary);

    server.stop().await;
}

#[tokio::test]
async fn refused_connections_are_errors_not_hangs() {
    let server = start().await;
    let mut c = common(server.addr, 2);
    c.secret_key_base = Some("a-different-secret-key-base-0123456789".into());
    let summary = sluice_load::run(&c, &Scenario::Echo(EchoArgs::default()))
        .await
        .expect("runs");
    assert_eq!(summary.errors, 2);
    assert_eq!(summary.error_kinds.get("connect"), Some(&2));
    assert_eq!(summary.connections.established, 0);
    assert!(summary.latency_us.is_none());
    assert!(
        summary.first_error.as_deref().unwrap_or("").contains("403"),
        "{:?}",
        summary.first_error
    );
    server.stop().await;
}

#[tokio::test]
async fn unanswered_pushes_are_timeouts_and_a_stall_error() {
    // Route the echo topics to a channel that never replies.
    let server = start_with(|c| {
        c.routes
            .insert(0, RouteSpec::parse("echo:*=silent/authenticated").unwrap());
    })
    .await;
    let mut c = common(server.addr, 2);
    c.warmup = Duration::ZERO;
    c.timeout = Duration::from_millis(300);
    let args = EchoArgs {
        window: 3,
        ..EchoArgs::default()
    };
    let started = std::time::Instant::now();
    let summary = sluice_load::run(&c, &Scenario::Echo(args))
        .await
        .expect("runs");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by duration + timeout"
    );
    assert_eq!(summary.connections.established, 2);
    assert_eq!(summary.sent, 6, "each connection filled its window once");
    assert_eq!(summary.received, 0);
    assert_eq!(summary.timeouts, 6);
    assert_eq!(summary.error_kinds.get("stalled"), Some(&2));
    assert!(summary.latency_us.is_none());
    server.stop().await;
}

// === files: download and upload (docs/FILES.md) ===

/// A directory under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("sluice-load-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("files")).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server serving `dir/files`, storing uploads in `dir/uploads`.
async fn files_server(dir: &TempDir) -> Server {
    let files = dir.0.join("files");
    let uploads = dir.0.join("uploads");
    start_with(move |c| {
        c.files_dir = files;
        c.uploads_dir = uploads;
    })
    .await
}

/// The common checks of a files summary; returns its JSON.
fn check_transfer(t: &sluice_load::TransferSummary, scenario: &str) -> Value {
    let v: Value = serde_json::from_str(&t.to_json()).expect("summary is JSON");
    assert_eq!(v["scenario"], scenario, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["timeouts"], 0, "{v}");
    assert_eq!(v["transfer"]["digest_mismatches"], 0, "{v}");
    assert!(v["transfer"]["mb_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["transfer"]["per_transfer_mb_s"]["p50"].is_number(), "{v}");
    assert!(v["latency_us"]["p50"].is_number(), "{v}");
    assert!(t.to_table().contains("MB/s"), "{}", t.to_table());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_verifies_chunks_and_digest() {
    let dir = TempDir::new("download");
    let size: usize = 3 * 1024 * 1024 + 4321;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.0.join("files/big.bin"), &data).unwrap();
    let server = files_server(&dir).await;
    let mut c = common(server.addr, 2);
    c.duration = Duration::from_secs(10);

    // Once per connection, 64 KiB chunks.
    let mut args = sluice_load::DownloadArgs::new("big.bin");
    args.chunk_size = Some(64 * 1024);
    let t = sluice_load::scenarios::download::run_transfer(&c, &args)
        .await
        .expect("download runs");
    let v = check_transfer(&t, "download");
    assert_eq!(v["connections"]["established"], 2, "{v}");
    assert_eq!(
        (v["sent"].as_u64(), v["received"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_eq!(v["transfer"]["completed"], 2, "{v}");
    assert_eq!(v["transfer"]["size_bytes"], size, "{v}");
    assert_eq!(v["transfer"]["chunk_bytes"], 64 * 1024, "{v}");
    assert_eq!(v["transfer"]["bytes"], 2 * size, "{v}");
    assert_eq!(v["transfer"]["verified"], true, "{v}");
    assert!(
        v["duration_s"].as_f64().unwrap() < 10.0,
        "ends when done: {v}"
    );

    // In a loop for a short window, the server's chunk size.
    let mut c1 = common(server.addr, 1);
    c1.warmup = Duration::from_millis(100);
    c1.duration = Duration::from_millis(700);
    let mut args = sluice_load::DownloadArgs::new("big.bin");
    args.repeat = true;
    let summary = sluice_load::run(&c1, &Scenario::Download(args))
        .await
        .expect("repeated download runs");
    assert_eq!(summary.errors, 0, "{:?}", summary.first_error);
    assert!(summary.received > 0, "{}", summary.to_json());

    // A missing file is a reply error, not a hang.
    let args = sluice_load::DownloadArgs::new("missing.bin");
    let started = std::time::Instant::now();
    let t = sluice_load::scenarios::download::run_transfer(&common(server.addr, 1), &args)
        .await
        .expect("runs");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        t.summary.error_kinds.get("reply"),
        Some(&1),
        "{}",
        t.to_json()
    );
    assert!(
        t.summary
            .first_error
            .as_deref()
            .unwrap_or("")
            .contains("not_found"),
        "{:?}",
        t.summary.first_error
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_is_windowed_and_verified() {
    let dir = TempDir::new("upload");
    let server = files_server(&dir).await;
    let mut c = common(server.addr, 2);
    c.duration = Duration::from_secs(10);
    let size: u64 = 3 * 1024 * 1024 + 5;
    let mut args = sluice_load::UploadArgs::new(size);
    args.chunk_size = 256 * 1024;
    // Smaller than the server's window: credit has to come back.
    args.window = Some(512 * 1024);
    args.name = "smoke".into();
    let t = sluice_load::scenarios::upload::run_transfer(&c, &args)
        .await
        .expect("upload runs");
    let v = check_transfer(&t, "upload");
    assert_eq!(
        (v["sent"].as_u64(), v["received"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_eq!(v["transfer"]["bytes"], 2 * size, "{v}");
    assert_eq!(v["transfer"]["window_bytes"], 512 * 1024, "{v}");

    // Both files are in place for user 1, with the content's digest.
    let expected = sluice_load::scenarios::upload::Pattern::new(256 * 1024).sha256(size);
    let mut found = 0;
    for entry in std::fs::read_dir(dir.0.join("uploads/1")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("smoke-") && name.ends_with(".bin")) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, size, "{name}");
        use sha2::Digest as _;
        let digest = sluice_load::scenarios::download::hex(&sha2::Sha256::digest(&bytes));
        assert_eq!(digest, expected, "{name}");
        found += 1;
    }
    assert_eq!(found, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_counts_relayed_pushes_and_latency() {
    use sluice::relay::mock::{MockOptions, MockUpstream};
    use sluice_load::PricesArgs;

    let mock = MockUpstream::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MockOptions {
            rate_hz: 50.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let upstream = format!("ws://{}/prices?assets={{assets}}", mock.local_addr());
    let server = start_with(move |c| c.upstream = upstream).await;

    let mut c = common(server.addr, 5);
    c.duration = Duration::from_secs(2);
    c.warmup = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let args = PricesArgs {
        assets: vec!["bitcoin".into(), "ethereum".into()],
        all_assets: false,
    };
    let p = sluice_load::scenarios::prices::run_prices(&c, &args)
        .await
        .expect("prices runs");
    let v: Value = serde_json::from_str(&p.to_json()).expect("summary is JSON");
    assert_eq!(v["scenario"], "prices", "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["connections"]["established"], 5, "{v}");
    assert_eq!(v["prices"]["joined"], 5, "{v}");
    assert!(v["received"].as_u64().unwrap() > 0, "{v}");
    assert!(v["rate"].as_f64().unwrap() > 0.0, "{v}");
    for field in ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(
            v["latency_us"][field].is_number(),
            "latency_us.{field} in {v}"
        );
    }
    // Same host clock, loopback: well under a second.
    assert!(v["latency_us"]["p50"].as_u64().unwrap() < 1_000_000, "{v}");
    assert!(v["prices"]["status_pushes"].is_u64(), "{v}");
    assert!(p.to_table().contains("status"), "{}", p.to_table());
    assert!(started.elapsed() < Duration::from_secs(15));

    // Every asset on every connection.
    let all = PricesArgs {
        all_assets: true,
        ..args
    };
    c.connections = 2;
    c.duration = Duration::from_millis(500);
    let p = sluice_load::scenarios::prices::run_prices(&c, &all)
        .await
        .expect("prices runs");
    assert_eq!(p.summary.errors, 0, "{}", p.to_json());
    assert_eq!(p.prices.joined, 4, "{}", p.to_json());
    assert!(p.summary.received > 0, "{}", p.to_json());

    server.stop().await;
    drop(mock);
}
