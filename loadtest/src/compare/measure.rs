//! One measurement: the generator command for a case and server, running it
//! pinned to the generator core while the server's CPU time is read before
//! and after, and turning its output into figures.
//!
//! # Contract
//! * The generator is `sluice-load --json --allow-errors` (its errors are
//!   counted and shown, never a reason to drop the run), `curl` (nginx) or
//!   `iperf3 -c -R -J` (reverse: the *server* sends, as a file server does),
//!   each as a [`Spawned`] with a deadline; Ctrl-C stops it.
//! * Server CPU = Δ(utime+stime) of the server's process tree over the
//!   whole generator run (setup, warm-up, measured window, grace). Per
//!   message it is divided by the messages of warm-up + window at the
//!   measured rate, so connection setup is charged too: a small
//!   over-estimate, alike for every server.
//! * Idle memory per socket = `sluice-load connect --server-pid`'s figure:
//!   the server's VmRSS once every socket is set up and a settle has passed,
//!   minus before the first, ÷ sockets established. As a cross-check (and a
//!   fallback for a server with children) this tool also samples the peak
//!   RSS of the server's tree every [`RSS_EVERY`] during the run.
//! * Parsers ([`parse_load`], [`parse_curl`], [`parse_iperf`]) are pure.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::interrupt;
use super::plan::{Kind, ServerKind};
use super::servers::{Env, Server, ServerError, Spawned, FILE_NAME};

/// How often the server's RSS is sampled during an idle-sockets run.
pub const RSS_EVERY: Duration = Duration::from_millis(200);

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The server could not be started or probed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The generator exited badly.
    #[error("{what} failed ({status}): {detail}")]
    Generator {
        /// The program.
        what: String,
        /// Its exit status.
        status: String,
        /// Its stderr (tail) or what was wrong with its output.
        detail: String,
    },
    /// The generator ran past its deadline and was stopped.
    #[error("{what} still running after {secs} s: stopped")]
    Timeout {
        /// The program.
        what: String,
        /// The deadline.
        secs: u64,
    },
    /// The generator's output could not be understood.
    #[error("cannot parse {what} output: {detail}")]
    Parse {
        /// The program.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// `/proc` could not be read for the server.
    #[error("server CPU or memory: {0}")]
    Proc(#[from] super::procfs::ProcError),
    /// The server died during the run.
    #[error("{kind} exited during the run; log tail:\n{log}")]
    ServerDied {
        /// The server.
        kind: ServerKind,
        /// Its log's tail.
        log: String,
    },
}

/// Lengths of one measured run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    /// Measured window (sluice-load `--duration`).
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Unmeasured traffic first (sluice-load `--warmup`).
    #[serde(with = "secs")]
    pub warmup: Duration,
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// A duration as sluice-load takes it (`1500ms`).
pub fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The `sluice-load` arguments (after the program) for `kind` against
/// `server` on `port`. `secret` is Sluice's secret key base; `server_pid`
/// is given to `connect`.
pub fn load_args(
    kind: &Kind,
    server: ServerKind,
    port: u16,
    secret: &str,
    timing: Timing,
    server_pid: u32,
    source_addrs: &str,
) -> Vec<String> {
    let mut a: Vec<String> = vec!["--json".into(), "--allow-errors".into()];
    let s = |v: &str| v.to_owned();
    if server == ServerKind::Sluice {
        a.extend([
            s("--url"),
            format!("ws://127.0.0.1:{port}/socket/websocket"),
            s("--secret-key-base"),
            s(secret),
        ]);
    } else {
        a.extend([
            s("--protocol"),
            s("raw"),
            s("--url"),
            format!("ws://127.0.0.1:{port}"),
        ]);
    }
    match *kind {
        Kind::Echo { connections, size } => {
            a.extend(timing_args(timing));
            a.extend([
                s("echo"),
                s("-c"),
                connections.to_string(),
                s("-w"),
                s("1"),
                s("-p"),
                size.to_string(),
                s("--binary"),
            ]);
        }
        Kind::Broadcast {
            subscribers,
            rate,
            size,
        } => {
            a.extend(timing_args(timing));
            a.extend([
                s("broadcast"),
                s("-c"),
                subscribers.to_string(),
                s("--rate"),
                rate.to_string(),
                s("--size"),
                size.to_string(),
                s("--binary"),
            ]);
        }
        Kind::Connect { sockets } => {
            a.extend(timing_args(timing));
            a.extend([
                s("connect"),
                s("-c"),
                sockets.to_string(),
                s("--server-pid"),
                server_pid.to_string(),
                s("--source-addrs"),
                s(source_addrs),
            ]);
        }
        Kind::Download { .. } => {
            // One download; the duration is only its upper bound.
            a.extend([
                s("--duration"),
                s("300s"),
                s("--timeout"),
                s("30s"),
                s("download"),
                s("--file"),
                s(FILE_NAME),
                s("--no-verify"),
            ]);
        }
    }
    a
}

fn timing_args(t: Timing) -> [String; 4] {
    [
        "--duration".into(),
        humantime_ms(t.duration),
        "--warmup".into(),
        humantime_ms(t.warmup),
    ]
}

/// The fields of a `sluice-load --json` summary that the comparison uses.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadReport {
    /// Scenario name.
    pub scenario: String,
    /// Parameters as run.
    pub params: LoadParams,
    /// Connections asked for and established.
    pub connections: LoadConnections,
    /// Messages sent in the window.
    pub sent: u64,
    /// Replies or deliveries in the window.
    pub received: u64,
    /// All errors.
    pub errors: u64,
    /// Messages never answered in time.
    pub timeouts: u64,
    /// Errors by kind.
    #[serde(default)]
    pub error_kinds: BTreeMap<String, u64>,
    /// The first error.
    #[serde(default)]
    pub first_error: Option<String>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// `received` per second.
    pub rate: f64,
    /// Latency percentiles, µs.
    #[serde(default)]
    pub latency_us: Option<LoadLatency>,
    /// Files scenarios: bytes and throughput.
    #[serde(default)]
    pub transfer: Option<LoadTransfer>,
}

/// `params` of a summary.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadParams {
    /// Warm-up, seconds.
    #[serde(default)]
    pub warmup_s: f64,
}

/// `connections` of a summary.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LoadConnections {
    /// Asked for.
    pub requested: u64,
    /// Connected (and joined).
    pub established: u64,
}

/// `latency_us` of a summary.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LoadLatency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
}

/// `transfer` of a files summary.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LoadTransfer {
    /// Bytes counted.
    pub bytes: u64,
    /// Their time, seconds.
    pub seconds: f64,
    /// MB/s (10^6 B/s).
    pub mb_per_s: f64,
}

/// Parse `sluice-load --json` stdout (its last JSON line).
pub fn parse_load(stdout: &str) -> Result<(LoadReport, Value), MeasureError> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| MeasureError::Parse {
            what: "sluice-load",
            detail: "no JSON line".into(),
        })?;
    let raw: Value = serde_json::from_str(line).map_err(|e| MeasureError::Parse {
        what: "sluice-load",
        detail: e.to_string(),
    })?;
    let report = serde_json::from_value(raw.clone()).map_err(|e| MeasureError::Parse {
        what: "sluice-load",
        detail: e.to_string(),
    })?;
    Ok((report, raw))
}

/// What `curl -w '%{http_code} %{size_download} %{time_total}'` printed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurlResult {
    /// HTTP status.
    pub code: u16,
    /// Bytes received.
    pub bytes: u64,
    /// Total time, seconds.
    pub seconds: f64,
}

/// Parse curl's `-w` line.
pub fn parse_curl(out: &str) -> Result<CurlResult, MeasureError> {
    let bad = |d: &str| MeasureError::Parse {
        what: "curl",
        detail: format!("{d}: {out:?}"),
    };
    let f: Vec<&str> = out.split_whitespace().collect();
    if f.len() != 3 {
        return Err(bad("expected `code bytes seconds`"));
    }
    Ok(CurlResult {
        code: f[0].parse().map_err(|_| bad("code"))?,
        bytes: f[1].parse().map_err(|_| bad("size"))?,
        seconds: f[2].parse().map_err(|_| bad("time"))?,
    })
}

/// What an `iperf3 -c … -J` run moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    /// Bytes the sender wrote.
    pub sent_bytes: u64,
    /// Bytes the receiver read.
    pub received_bytes: u64,
    /// The receiver's time, seconds.
    pub received_seconds: f64,
}

/// Parse iperf3's `-J` output.
pub fn parse_iperf(json: &str) -> Result<(IperfResult, Value), MeasureError> {
    let bad = |d: String| MeasureError::Parse {
        what: "iperf3",
        detail: d,
    };
    let v: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(bad(format!("iperf3 error: {e}")));
    }
    let num = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(format!("no {p}")))
    };
    let r = IperfResult {
        sent_bytes: num("/end/sum_sent/bytes")? as u64,
        received_bytes: num("/end/sum_received/bytes")? as u64,
        received_seconds: num("/end/sum_received/seconds")?,
    };
    Ok((r, v))
}

/// The figures of one run (absent when they do not apply or were not measured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Messages or deliveries per second.
    pub rate: Option<f64>,
    /// Median latency, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub p99_us: Option<f64>,
    /// Server CPU per message or delivery, µs.
    pub cpu_us_per_unit: Option<f64>,
    /// Server memory per idle socket, KiB: `sluice-load connect`'s VmRSS
    /// after the settle minus before, per socket established.
    pub rss_kib_per_socket: Option<f64>,
    /// Cross-check: peak RSS of the server's tree during the run minus
    /// before, per socket, KiB (sampled by this tool).
    pub rss_peak_kib_per_socket: Option<f64>,
    /// Wall throughput, GB/s.
    pub gb_per_s: Option<f64>,
    /// Server CPU-seconds per GB.
    pub cpu_s_per_gb: Option<f64>,
    /// Connections established (of those asked for).
    pub established: Option<u64>,
}

/// Echo and broadcast figures from a summary and the server's CPU-seconds.
pub fn message_metrics(r: &LoadReport, cpu_s: f64) -> Metrics {
    let units = r.rate * (r.params.warmup_s + r.duration_s);
    Metrics {
        rate: Some(r.rate),
        p50_us: r.latency_us.map(|l| l.p50 as f64),
        p99_us: r.latency_us.map(|l| l.p99 as f64),
        cpu_us_per_unit: (units > 0.0).then(|| cpu_s * 1e6 / units),
        established: Some(r.connections.established),
        ..Metrics::default()
    }
}

/// `connect.server.per_connection.vm_rss_bytes` of a `sluice-load connect`
/// summary, in KiB.
pub fn connect_rss_kib(raw: &Value) -> Option<f64> {
    raw.pointer("/connect/server/per_connection/vm_rss_bytes")
        .and_then(Value::as_f64)
        .map(|b| b / 1024.0)
}

/// Throughput figures: `bytes` moved at `gb_per_s` for `cpu_s` of server CPU.
pub fn bytes_metrics(bytes: u64, gb_per_s: f64, cpu_s: f64) -> Metrics {
    Metrics {
        gb_per_s: Some(gb_per_s),
        cpu_s_per_gb: (bytes > 0).then(|| cpu_s / (bytes as f64 / 1e9)),
        ..Metrics::default()
    }
}

/// How a measurement ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Status {
    /// Measured (errors, if any, are in the sample).
    Ok,
    /// Could not be measured.
    Failed(String),
    /// The server's program is missing.
    NotInstalled(String),
}

/// One run of one server in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// [`super::plan::Case::id`].
    pub case: String,
    /// The server.
    pub server: ServerKind,
    /// 1-based round.
    pub round: u32,
    /// Outcome.
    #[serde(flatten)]
    pub status: Status,
    /// Figures.
    pub metrics: Metrics,
    /// Errors the generator counted.
    pub errors: u64,
    /// Timeouts the generator counted.
    pub timeouts: u64,
    /// Errors by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// The first error's message.
    pub first_error: Option<String>,
    /// Server CPU-seconds over the generator run.
    pub server_cpu_s: Option<f64>,
    /// Wall time of the generator run, seconds.
    pub wall_s: Option<f64>,
    /// The generator command (the secret replaced by `$SKB`).
    pub command: Option<String>,
    /// The generator's own output (JSON), as printed.
    pub raw: Option<Value>,
}

impl Sample {
    /// A sample without figures.
    pub fn empty(case: &str, server: ServerKind, round: u32, status: Status) -> Sample {
        Sample {
            case: case.to_owned(),
            server,
            round,
            status,
            metrics: Metrics::default(),
            errors: 0,
            timeouts: 0,
            error_kinds: BTreeMap::new(),
            first_error: None,
            server_cpu_s: None,
            wall_s: None,
            command: None,
            raw: None,
        }
    }

    /// Whether it was measured.
    pub fn ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// What a generator process printed.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: std::process::ExitStatus,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
    /// Wall time.
    pub wall: Duration,
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// Run `program args` pinned to the generator core, with a deadline.
pub fn run_generator(
    env: &Env,
    program: &std::path::Path,
    args: &[String],
    deadline: Duration,
) -> Result<Output, MeasureError> {
    let what = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = env.pinned(&env.load_core, program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut proc = Spawned::spawn(cmd)?;
    let out = reader(proc.child_mut().stdout.take());
    let err = reader(proc.child_mut().stderr.take());
    let status = loop {
        if let Some(s) = proc.exited() {
            break s;
        }
        if interrupt::interrupted() {
            return Err(ServerError::Interrupted.into());
        }
        if start.elapsed() > deadline {
            proc.stop(Duration::from_secs(2));
            return Err(MeasureError::Timeout {
                what,
                secs: deadline.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed();
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        wall,
    })
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Samples a server's RSS on a thread until dropped; keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(kib) = super::procfs::rss_kib_tree(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(RSS_EVERY);
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long a generator may run before it is stopped.
fn deadline_for(kind: &Kind, timing: Timing) -> Duration {
    let conns = match *kind {
        Kind::Echo { connections, .. } => connections,
        Kind::Broadcast { subscribers, .. } => subscribers,
        Kind::Connect { sockets } => sockets,
        Kind::Download { .. } => return Duration::from_secs(400),
    };
    timing.warmup
        + timing.duration
        + Duration::from_secs(60)
        + Duration::from_millis(2 * conns as u64)
}

/// Options of one measurement that are not in the case.
#[derive(Debug, Clone, Copy)]
pub struct Knobs<'a> {
    /// Lengths.
    pub timing: Timing,
    /// Clock ticks per second.
    pub ticks_per_s: u64,
    /// `--source-addrs` for `connect`.
    pub source_addrs: &'a str,
}

/// Start `kind`, measure `case_kind` against it once, stop it.
pub fn measure(
    env: &Env,
    case: &str,
    case_kind: &Kind,
    kind: ServerKind,
    round: u32,
    knobs: Knobs<'_>,
) -> Sample {
    match measure_inner(env, case_kind, kind, knobs) {
        Ok(mut s) => {
            s.case = case.to_owned();
            s.round = round;
            s
        }
        Err(e) => Sample::empty(case, kind, round, Status::Failed(e.to_string())),
    }
}

fn cpu_s(before: u64, after: u64, ticks: u64) -> f64 {
    after.saturating_sub(before) as f64 / ticks as f64
}

fn measure_inner(
    env: &Env,
    case_kind: &Kind,
    kind: ServerKind,
    knobs: Knobs<'_>,
) -> Result<Sample, MeasureError> {
    let mut server = Server::start(env, kind)?;
    let sample = match (case_kind, kind) {
        (Kind::Download { bytes, .. }, ServerKind::Nginx) => {
            with_curl(env, &server, *bytes, knobs.ticks_per_s)?
        }
        (Kind::Download { iperf_seconds, .. }, ServerKind::Iperf3) => {
            with_iperf(env, &server, *iperf_seconds, knobs.ticks_per_s)?
        }
        _ => with_load(env, &server, case_kind, knobs)?,
    };
    if !server.alive() {
        return Err(MeasureError::ServerDied {
            kind,
            log: super::servers::log_tail(&server.log, 20),
        });
    }
    server.stop();
    Ok(sample)
}

/// nginx: one `curl` download after an untimed one.
fn with_curl(env: &Env, server: &Server, bytes: u64, ticks: u64) -> Result<Sample, MeasureError> {
    let curl = env.bins.curl.clone().unwrap_or_else(|| "curl".into());
    let args: Vec<String> = vec![
        "-s".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code} %{size_download} %{time_total}".into(),
        format!("http://127.0.0.1:{}/{FILE_NAME}", server.port),
    ];
    // Untimed warm-up, as for Sluice.
    run_generator(env, &curl, &args, Duration::from_secs(400))?;
    let c0 = server.cpu_ticks()?;
    let out = run_generator(env, &curl, &args, Duration::from_secs(400))?;
    let c1 = server.cpu_ticks()?;
    let r = parse_curl(&out.stdout)?;
    if r.code != 200 || r.bytes != bytes {
        return Err(MeasureError::Generator {
            what: "curl".into(),
            status: out.status.to_string(),
            detail: format!("HTTP {}, {} of {bytes} bytes", r.code, r.bytes),
        });
    }
    let cpu = cpu_s(c0, c1, ticks);
    let mut sample = Sample::empty("", server.kind, 0, Status::Ok);
    sample.command = Some(format!("curl {}", shell_words(&args)));
    sample.server_cpu_s = Some(cpu);
    sample.wall_s = Some(out.wall.as_secs_f64());
    sample.metrics = bytes_metrics(r.bytes, r.bytes as f64 / r.seconds / 1e9, cpu);
    Ok(sample)
}

/// iperf3: one reverse stream (the server sends) of `seconds`.
fn with_iperf(
    env: &Env,
    server: &Server,
    seconds: u64,
    ticks: u64,
) -> Result<Sample, MeasureError> {
    let iperf = env.bins.iperf3.clone().unwrap_or_else(|| "iperf3".into());
    let args: Vec<String> = [
        "-c",
        "127.0.0.1",
        "-p",
        &server.port.to_string(),
        "-t",
        &seconds.to_string(),
        "-R",
        "-l",
        "1M",
        "-J",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c0 = server.cpu_ticks()?;
    let out = run_generator(env, &iperf, &args, Duration::from_secs(seconds + 60))?;
    let c1 = server.cpu_ticks()?;
    let (r, raw) = parse_iperf(&out.stdout)?;
    let cpu = cpu_s(c0, c1, ticks);
    let mut sample = Sample::empty("", server.kind, 0, Status::Ok);
    sample.command = Some(format!("iperf3 {}", shell_words(&args)));
    sample.server_cpu_s = Some(cpu);
    sample.wall_s = Some(out.wall.as_secs_f64());
    sample.metrics = bytes_metrics(
        r.sent_bytes,
        r.received_bytes as f64 / r.received_seconds / 1e9,
        cpu,
    );
    sample.raw = Some(raw);
    Ok(sample)
}

/// `sluice-load`: echo, broadcast, connect, or a download (after an untimed one).
fn with_load(
    env: &Env,
    server: &Server,
    case_kind: &Kind,
    knobs: Knobs<'_>,
) -> Result<Sample, MeasureError> {
    let args = load_args(
        case_kind,
        server.kind,
        server.port,
        &env.secret,
        knobs.timing,
        server.pid(),
        knobs.source_addrs,
    );
    if let Kind::Download { .. } = case_kind {
        // Sluice hashes a file on first open: keep that out of the figures.
        let warm = run_generator(env, &env.bins.load, &args, Duration::from_secs(400))?;
        parse_load(&warm.stdout)?;
    }
    let base_rss = server.rss_kib()?;
    let sampler =
        matches!(case_kind, Kind::Connect { .. }).then(|| RssSampler::start(server.pid()));
    let c0 = server.cpu_ticks()?;
    let out = run_generator(
        env,
        &env.bins.load,
        &args,
        deadline_for(case_kind, knobs.timing),
    )?;
    let c1 = server.cpu_ticks()?;
    let peak_rss = sampler.map(RssSampler::finish);
    let (r, raw) = parse_load(&out.stdout).map_err(|e| MeasureError::Generator {
        what: "sluice-load".into(),
        status: out.status.to_string(),
        detail: format!("{e}; stderr: {}", tail(&out.stderr, 5)),
    })?;
    let cpu = cpu_s(c0, c1, knobs.ticks_per_s);
    let mut sample = Sample::empty("", server.kind, 0, Status::Ok);
    sample.command = Some(format!(
        "sluice-load {}",
        shell_words(&args).replace(&env.secret, "$SKB").replace(
            &format!("--server-pid {}", server.pid()),
            "--server-pid $PID"
        )
    ));
    sample.server_cpu_s = Some(cpu);
    sample.wall_s = Some(out.wall.as_secs_f64());
    sample.errors = r.errors;
    sample.timeouts = r.timeouts;
    sample.error_kinds = r.error_kinds.clone();
    sample.first_error = r.first_error.clone();
    sample.metrics = match case_kind {
        Kind::Download { .. } => {
            let t = r.transfer.ok_or_else(|| MeasureError::Parse {
                what: "sluice-load",
                detail: "download summary without `transfer`".into(),
            })?;
            bytes_metrics(t.bytes, t.mb_per_s / 1e3, cpu)
        }
        Kind::Connect { .. } => {
            let established = r.connections.established;
            let grown = peak_rss.unwrap_or(0).saturating_sub(base_rss);
            let peak = (established > 0).then(|| grown as f64 / established as f64);
            Metrics {
                rss_kib_per_socket: connect_rss_kib(&raw).or(peak),
                rss_peak_kib_per_socket: peak,
                established: Some(established),
                ..Metrics::default()
            }
        }
        _ => message_metrics(&r, cpu),
    };
    sample.raw = Some(raw);
    Ok(sample)
}

/// Arguments joined for display, quoted where the shell would need it.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: &str = include_str!("testdata/sluice-load-echo.json");
    const BROADCAST: &str = include_str!("testdata/sluice-load-broadcast.json");
    const DOWNLOAD: &str = include_str!("testdata/sluice-load-download.json");
    const IPERF: &str = include_str!("testdata/iperf3-reverse.json");
    /// `sluice-load connect -c 18000 --server-pid` against Sluice (a run of this tool).
    const CONNECT: &str = include_str!("testdata/sluice-load-connect.json");

    #[test]
    fn parses_real_sluice_load_output() {
        let (r, raw) = parse_load(ECHO).expect("echo");
        assert_eq!(r.scenario, "echo");
        assert_eq!((r.sent, r.received, r.errors), (35191, 35191, 0));
        assert_eq!(r.connections.established, 10);
        assert_eq!(r.latency_us.map(|l| (l.p50, l.p99)), Some((101, 5011)));
        assert_eq!(raw["params"]["encoding"], "binary");
        let m = message_metrics(&r, 1.5);
        assert_eq!(m.rate, Some(35191.0));
        // 1.5 CPU-s over 1.5 s of traffic at 35 191/s.
        let per = m.cpu_us_per_unit.expect("cpu");
        assert!((per - 1.5e6 / (35191.0 * 1.5)).abs() < 1e-9, "{per}");

        let (b, _) = parse_load(&format!("noise\n{BROADCAST}")).expect("broadcast");
        assert_eq!(b.rate, 664000.0);
        assert_eq!(b.connections.established, 51);

        let (d, _) = parse_load(DOWNLOAD).expect("download");
        let t = d.transfer.expect("transfer");
        assert_eq!(t.bytes, 8_388_608);
        let m = bytes_metrics(t.bytes, t.mb_per_s / 1e3, 0.004);
        assert!((m.gb_per_s.expect("gb") - 0.2395).abs() < 1e-9);
        assert!((m.cpu_s_per_gb.expect("cpu") - 0.004 / 0.008388608).abs() < 1e-9);

        assert!(parse_load("").is_err());
        assert!(parse_load("{\"scenario\":\"echo\"}").is_err());
    }

    #[test]
    fn connect_memory_per_socket() {
        let (r, raw) = parse_load(CONNECT).expect("connect");
        assert_eq!(r.scenario, "connect");
        assert_eq!(r.connections.established, 18_000);
        let kib = connect_rss_kib(&raw).expect("per connection");
        assert!((kib - 3747.0 / 1024.0).abs() < 1e-9, "{kib}");
        let (e, raw) = parse_load(ECHO).expect("echo");
        assert_eq!(e.scenario, "echo");
        assert_eq!(connect_rss_kib(&raw), None);
    }

    #[test]
    fn parses_real_iperf3_output() {
        let (r, raw) = parse_iperf(IPERF).expect("iperf3");
        assert_eq!(r.sent_bytes, 718_274_560);
        assert_eq!(r.received_bytes, 713_030_938);
        assert!((r.received_seconds - 1.001334).abs() < 1e-9);
        assert_eq!(raw["start"]["test_start"]["reverse"], 1);
        let err = parse_iperf(
            r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#,
        );
        assert!(err
            .expect_err("error")
            .to_string()
            .contains("Connection refused"));
    }

    #[test]
    fn parses_curl() {
        let r = parse_curl("200 1073741824 0.612345").expect("curl");
        assert_eq!(r.code, 200);
        assert_eq!(r.bytes, 1 << 30);
        assert!(parse_curl("000 0").is_err());
    }

    #[test]
    fn generator_arguments() {
        let t = Timing {
            duration: Duration::from_secs(5),
            warmup: Duration::from_millis(1500),
        };
        let echo = Kind::Echo {
            connections: 100,
            size: 20,
        };
        let a = load_args(&echo, ServerKind::Sluice, 4760, "S", t, 1, "127.0.0.1");
        assert_eq!(
            shell_words(&a),
            "--json --allow-errors --url ws://127.0.0.1:4760/socket/websocket \
             --secret-key-base S --duration 5000ms --warmup 1500ms echo -c 100 -w 1 -p 20 --binary"
        );
        let b = Kind::Broadcast {
            subscribers: 1000,
            rate: 0,
            size: 64,
        };
        let a = load_args(&b, ServerKind::Bun, 4761, "S", t, 1, "127.0.0.1");
        assert_eq!(
            shell_words(&a),
            "--json --allow-errors --protocol raw --url ws://127.0.0.1:4761 \
             --duration 5000ms --warmup 1500ms broadcast -c 1000 --rate 0 --size 64 --binary"
        );
        let c = Kind::Connect { sockets: 18000 };
        let a = load_args(&c, ServerKind::Fws, 4763, "S", t, 42, "127.0.0.1-127.0.0.4");
        assert!(shell_words(&a)
            .ends_with("connect -c 18000 --server-pid 42 --source-addrs 127.0.0.1-127.0.0.4"));
        assert_eq!(
            shell_words(&["a b".into(), "it's".into()]),
            "'a b' 'it'\\''s'"
        );
    }
}
