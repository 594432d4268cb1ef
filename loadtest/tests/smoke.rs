//! Runs every scenario through the library API against the real Sluice
//! server, in process on 127.0.0.1:0, and the raw-protocol scenarios
//! against a tiny raw peer ([`RawPeer`]); [`check_complete`] asserts that
//! each one's JSON output is complete and error-free.
//!
//! The `connect` test measures this process's memory, so it runs alone:
//! it takes [`EXCLUSIVE`] for writing, every other test for reading.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sluice::channel::{Channel, ChannelError, ChannelHandle, ChannelKind, Outcome};
use sluice::config::Config;
use sluice::protocol::{Payload, Topic};
use sluice::router::RouteSpec;
use sluice_load::{BroadcastArgs, Common, ConnectArgs, EchoArgs, Protocol, Scenario, SourceAddrs};
use tokio::sync::{oneshot, RwLock};

const SECRET: &str = "loadtest-smoke-secret-key-base-0123456789";

/// Held for writing by the test that measures the process's memory.
static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

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

/// The latency object `l` has every field, in order.
fn check_latency(l: &Value, what: &str, v: &Value) {
    for field in ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(l[field].is_number(), "{what}.{field} in {v}");
    }
    assert!(l["count"].as_u64().unwrap() > 0, "{what} in {v}");
    let order = ["min", "p50", "p90", "p99", "p999", "max"].map(|f| l[f].as_u64().unwrap());
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "{what} out of order in {v}"
    );
}

/// The JSON output of a run of `scenario` (as `sluice-load --json` prints
/// it) is complete and error-free: every common field present (`null` where
/// it does not apply, never missing), zero errors and timeouts counted
/// explicitly, latency p50/p90/p99/p99.9/max, and the scenario's own object.
fn check_complete(v: &Value, scenario: &str) {
    assert_eq!(v["scenario"], scenario, "{v}");
    let obj = v.as_object().expect("one JSON object");
    for key in [
        "scenario",
        "params",
        "connections",
        "sent",
        "received",
        "expected",
        "errors",
        "timeouts",
        "error_kinds",
        "first_error",
        "duration_s",
        "rate",
        "rate_unit",
        "publish_rate",
        "latency_us",
    ] {
        assert!(obj.contains_key(key), "{key} missing in {v}");
    }
    let params = &v["params"];
    for key in [
        "url",
        "connections",
        "duration_s",
        "warmup_s",
        "timeout_s",
        "payload_bytes",
        "encoding",
    ] {
        assert!(!params[key].is_null(), "params.{key} missing in {v}");
    }
    assert!(
        params["protocol"] == "phoenix" || params["protocol"] == "raw",
        "params.protocol in {v}"
    );
    let requested = v["connections"]["requested"].as_u64().unwrap();
    assert!(requested > 0, "{v}");
    assert_eq!(v["connections"]["established"], requested, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["timeouts"], 0, "{v}");
    assert_eq!(v["error_kinds"], serde_json::json!({}), "{v}");
    assert!(v["first_error"].is_null(), "{v}");
    assert!(v["sent"].is_u64(), "{v}");
    assert!(v["received"].as_u64().unwrap() > 0, "{v}");
    assert!(v["duration_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["rate"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["rate_unit"].is_string(), "{v}");
    check_latency(&v["latency_us"], "latency_us", v);
    match scenario {
        "echo" => assert_eq!(params["window"].as_u64().map(|w| w > 0), Some(true), "{v}"),
        "broadcast" => {
            assert_eq!(v["received"], v["expected"], "{v}");
            assert!(v["publish_rate"].as_f64().unwrap() > 0.0, "{v}");
            assert!(
                params["rate"].is_u64() && params["topic"].is_string(),
                "{v}"
            );
        }
        "download" | "upload" => {
            let t = &v["transfer"];
            for key in [
                "file",
                "size_bytes",
                "chunk_bytes",
                "repeat",
                "verified",
                "completed",
                "bytes",
                "seconds",
                "mb_per_s",
            ] {
                assert!(!t[key].is_null(), "transfer.{key} missing in {v}");
            }
            for key in ["min", "p10", "p50", "p90", "max"] {
                assert!(t["per_transfer_mb_s"][key].is_number(), "{v}");
            }
            assert_eq!(t["digest_mismatches"], 0, "{v}");
            assert!(t["cut_at_end"].is_u64(), "{v}");
            assert!(t["mb_per_s"].as_f64().unwrap() > 0.0, "{v}");
            if scenario == "upload" {
                assert!(t["window_bytes"].is_u64(), "{v}");
                assert!(t["acks_out_of_order"].is_u64(), "{v}");
            }
        }
        "prices" => {
            let p = &v["prices"];
            for key in [
                "assets",
                "all_assets",
                "joined",
                "new_pushes",
                "status_pushes",
                "latency",
            ] {
                assert!(!p[key].is_null(), "prices.{key} missing in {v}");
            }
            assert!(p["joined"].as_u64().unwrap() >= requested, "{v}");
        }
        "connect" => {
            let c = &v["connect"];
            for key in [
                "topic",
                "ramp_rate",
                "ramp_s",
                "connections_per_s",
                "settle_s",
                "held_s",
                "setup_timeouts",
            ] {
                assert!(!c[key].is_null(), "connect.{key} missing in {v}");
            }
            assert_eq!(c["setup_timeouts"], 0, "{v}");
            assert_eq!(v["received"], requested, "established, in {v}");
            check_latency(&c["connect_latency_us"], "connect.connect_latency_us", v);
            if params["protocol"] == "phoenix" {
                check_latency(&c["join_latency_us"], "connect.join_latency_us", v);
            } else {
                assert!(c["join_latency_us"].is_null(), "{v}");
            }
            assert!(c.as_object().unwrap().contains_key("server"), "{v}");
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// The JSON summary of an echo or broadcast run, checked complete.
fn check(summary: &sluice_load::Summary) -> Value {
    let v: Value = serde_json::from_str(&summary.to_json()).expect("summary is JSON");
    check_complete(&v, summary.scenario);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_broadcast_against_sluice() {
    let _shared = EXCLUSIVE.read().await;
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
    let _shared = EXCLUSIVE.read().await;
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
    let _shared = EXCLUSIVE.read().await;
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
    check_complete(&v, scenario);
    assert!(t.to_table().contains("MB/s"), "{}", t.to_table());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_verifies_chunks_and_digest() {
    let _shared = EXCLUSIVE.read().await;
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
    let t = sluice_load::scenarios::download::run_transfer(&c1, &args)
        .await
        .expect("repeated download runs");
    let v = check_transfer(&t, "download");
    assert_eq!(v["transfer"]["repeat"], true, "{v}");

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
    let _shared = EXCLUSIVE.read().await;
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
    let _shared = EXCLUSIVE.read().await;
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
    check_complete(&v, "prices");
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

// === connect (issue 5) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_holds_idle_connections_and_measures_memory() {
    // Alone: the memory sampled is this whole process's.
    let _alone = EXCLUSIVE.write().await;
    let server = start().await;
    let mut c = common(server.addr, 400);
    c.duration = Duration::from_millis(500);
    c.connect_concurrency = 32;
    let args = ConnectArgs {
        settle: Duration::from_millis(300),
        // The server runs in this process.
        server_pid: Some(std::process::id()),
        ..ConnectArgs::default()
    };
    let started = std::time::Instant::now();
    let s = sluice_load::scenarios::connect::run_connect(&c, &args)
        .await
        .expect("connect runs");
    let v: Value = serde_json::from_str(&s.to_json()).expect("summary is JSON");
    check_complete(&v, "connect");
    assert_eq!(v["connections"]["established"], 400, "{v}");
    assert_eq!(v["params"]["topic"], "room:idle", "{v}");
    assert_eq!(v["connect"]["topic"], "room:idle", "{v}");
    assert_eq!(v["connect"]["held_s"], 0.5, "{v}");
    let server_mem = &v["connect"]["server"];
    assert_eq!(server_mem["pid"], std::process::id(), "{v}");
    for key in ["vm_rss_bytes", "rss_anon_bytes", "vm_hwm_bytes"] {
        assert!(
            server_mem["before"][key].as_u64().unwrap() > 0,
            "{key} in {v}"
        );
        assert!(
            server_mem["after"][key].as_u64().unwrap() > 0,
            "{key} in {v}"
        );
        assert!(
            server_mem["per_connection"][key].is_number(),
            "{key} in {v}"
        );
    }
    let per_conn = server_mem["per_connection"]["vm_rss_bytes"]
        .as_f64()
        .unwrap();
    assert!(per_conn > 0.0, "RSS per connection in {v}");
    assert!(
        server_mem["per_connection"]["rss_anon_bytes"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{v}"
    );
    let table = s.to_table();
    assert!(
        table.contains("per conn") && table.contains("KiB"),
        "{table}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "bounded in time"
    );

    // Paced: 40 connections at 200/s take about 0.2 s to ramp.
    let mut c = common(server.addr, 40);
    c.duration = Duration::from_millis(200);
    let args = ConnectArgs {
        rate: 200,
        settle: Duration::ZERO,
        ..ConnectArgs::default()
    };
    let s = sluice_load::scenarios::connect::run_connect(&c, &args)
        .await
        .expect("paced connect runs");
    let v: Value = serde_json::from_str(&s.to_json()).expect("summary is JSON");
    check_complete(&v, "connect");
    let ramp = v["connect"]["ramp_s"].as_f64().unwrap();
    assert!((0.19..2.0).contains(&ramp), "ramp paced at 200/s: {v}");
    assert!(v["connect"]["server"].is_null(), "{v}");
    server.stop().await;
}

// === source addresses ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_addresses_rotate_against_sluice() {
    let _shared = EXCLUSIVE.read().await;
    let server = start().await;
    let mut c = common(server.addr, 3);
    c.source_addrs = Some(SourceAddrs::parse("127.0.0.2-127.0.0.4").unwrap());
    let summary = sluice_load::run(&c, &Scenario::Echo(EchoArgs::default()))
        .await
        .expect("echo runs");
    let v = check(&summary);
    assert_eq!(v["params"]["source_addrs"], 3, "{v}");
    server.stop().await;
}

// === raw protocol ===

type Subscribers = Arc<Mutex<Vec<tokio::sync::mpsc::Sender<(fastwebsockets::OpCode, Vec<u8>)>>>>;

/// A raw-protocol peer implementing the /echo /sub /pub contract with
/// fastwebsockets; it records the source address of every connection.
struct RawPeer {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<IpAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawPeer {
    async fn start() -> RawPeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let subs = Subscribers::default();
        let seen = peers.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer.ip());
                let subs = subs.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| raw_serve(req, subs.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        RawPeer { addr, peers, task }
    }

    fn common(&self, connections: usize) -> Common {
        let mut c = common(self.addr, connections);
        c.url = format!("ws://{}", self.addr);
        c.protocol = Protocol::Raw;
        c.secret_key_base = None;
        c
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_serve(
    mut req: hyper::Request<hyper::body::Incoming>,
    subs: Subscribers,
) -> Result<hyper::Response<http_body_util::Empty<bytes::Bytes>>, fastwebsockets::WebSocketError> {
    use fastwebsockets::{Frame, OpCode, Payload};
    let path = req.uri().path().to_owned();
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut req)?;
    // Subscribed before the 101 goes out.
    let mut sub = None;
    if path == "/sub" {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        subs.lock().unwrap().push(tx);
        sub = Some(rx);
    }
    tokio::spawn(async move {
        let Ok(ws) = upgrade.await else { return };
        let mut ws = fastwebsockets::FragmentCollector::new(ws);
        match (path.as_str(), sub) {
            ("/sub", Some(mut rx)) => {
                while let Some((opcode, data)) = rx.recv().await {
                    let frame = Frame::new(true, opcode, None, Payload::Owned(data));
                    if ws.write_frame(frame).await.is_err() {
                        return;
                    }
                }
            }
            ("/echo" | "/pub", _) => loop {
                let Ok(frame) = ws.read_frame().await else {
                    return;
                };
                let (opcode, data) = match frame.opcode {
                    OpCode::Text | OpCode::Binary => (frame.opcode, frame.payload.to_vec()),
                    OpCode::Close => return,
                    _ => continue,
                };
                if path == "/echo" {
                    let frame = Frame::new(true, opcode, None, Payload::Owned(data));
                    if ws.write_frame(frame).await.is_err() {
                        return;
                    }
                } else {
                    let targets = subs.lock().unwrap().clone();
                    for tx in targets {
                        let _ = tx.send((opcode, data.clone())).await;
                    }
                }
            },
            _ => {}
        }
    });
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_protocol_echo_broadcast_and_connect() {
    let _shared = EXCLUSIVE.read().await;
    let peer = RawPeer::start().await;

    // Echo, from three rotated source addresses.
    let mut c = peer.common(6);
    c.source_addrs = Some(SourceAddrs::parse("127.0.0.2-127.0.0.4").unwrap());
    let echo = Scenario::Echo(EchoArgs {
        window: 4,
        size: 64,
        ..EchoArgs::default()
    });
    let summary = sluice_load::run(&c, &echo).await.expect("raw echo runs");
    let v = check(&summary);
    assert_eq!(v["params"]["protocol"], "raw", "{v}");
    assert_eq!(v["params"]["encoding"], "binary", "{v}");
    assert_eq!(v["params"]["source_addrs"], 3, "{v}");
    assert_eq!(v["sent"], v["received"], "{v}");
    let mut seen: Vec<String> = peer
        .peers
        .lock()
        .unwrap()
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "127.0.0.2",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.4"
        ],
        "connection i binds addr[i mod 3]"
    );

    // Broadcast, paced: 200 msgs/s to 3 subscribers.
    let broadcast = Scenario::Broadcast(BroadcastArgs {
        rate: 200,
        ..BroadcastArgs::default()
    });
    let summary = sluice_load::run(&peer.common(3), &broadcast)
        .await
        .expect("raw broadcast runs");
    let v = check(&summary);
    assert_eq!(v["connections"]["established"], 4, "{v}");
    let sent = v["sent"].as_u64().unwrap();
    assert!((190..=210).contains(&sent), "{v}");
    assert_eq!(v["expected"].as_u64(), Some(sent * 3), "{v}");
    assert_eq!(v["params"]["topic"], "/sub", "{v}");

    // Flat out, bounded by --max-lag.
    let started = std::time::Instant::now();
    let flat_out = Scenario::Broadcast(BroadcastArgs {
        rate: 0,
        size: 100,
        ..BroadcastArgs::default()
    });
    let summary = sluice_load::run(&peer.common(2), &flat_out)
        .await
        .expect("raw flat-out broadcast runs");
    let v = check(&summary);
    assert_eq!(v["params"]["max_lag"], 64, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "subscribers stop on `done`, not at the deadline"
    );

    // Connect: sockets on /sub, held idle.
    let s = sluice_load::scenarios::connect::run_connect(&peer.common(20), &ConnectArgs::default())
        .await
        .expect("raw connect runs");
    let v: Value = serde_json::from_str(&s.to_json()).expect("summary is JSON");
    check_complete(&v, "connect");
    assert_eq!(v["connect"]["topic"], "/sub", "{v}");

    // The Phoenix-only scenarios refuse.
    for scenario in [
        Scenario::Download(sluice_load::DownloadArgs::new("f")),
        Scenario::Upload(sluice_load::UploadArgs::new(1)),
        Scenario::Prices(sluice_load::PricesArgs::default()),
    ] {
        assert!(matches!(
            sluice_load::run(&peer.common(1), &scenario).await,
            Err(sluice_load::Error::Invalid(_))
        ));
    }
}
