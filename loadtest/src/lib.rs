//! sluice-load: a load generator for Sluice and other Phoenix Channels
//! servers, speaking the vsn 2.0.0 wire protocol (JSON text frames and binary
//! frames) over fastwebsockets — or, with `--protocol raw`, plain WebSocket
//! messages to peers that implement the small `/echo` `/sub` `/pub`
//! contract of [`client::raw`].
//!
//! # Layout
//! * [`codec`]: sans-IO client codec: encode pushes, decode server frames.
//! * [`client`]: URL and token, the WebSocket handshake over hyper, one
//!   connection's read and write halves, join and heartbeat; the protocols.
//! * [`sources`]: `--source-addrs`, local addresses connections rotate over.
//! * [`harness`]: the run every scenario shares: one task per connection,
//!   bounded (and optionally ramped) setup, the warmup → measure → grace
//!   timeline, hard deadline.
//! * [`progress`]: live counters and the progress bar on stderr.
//! * [`stats`]: per-connection counters, error kinds and latency histogram.
//! * [`report`]: the [`Summary`], as JSON or as a table.
//! * [`system`]: `/proc/PID/status` memory figures, the open-files limit.
//! * [`scenarios`]: one module per scenario ([`scenarios::echo`],
//!   [`scenarios::broadcast`], [`scenarios::connect`],
//!   [`scenarios::download`], [`scenarios::upload`], [`scenarios::prices`]).
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> Result<(), sluice_load::Error> {
//! use clap::Parser;
//! let cli = sluice_load::Cli::parse_from(["sluice-load", "--token", "T", "echo", "--window", "4"]);
//! let summary = sluice_load::run(&cli.common, &cli.scenario).await?;
//! println!("{}", summary.to_json());
//! # Ok(()) }
//! ```

pub mod client;
pub mod codec;
pub mod compare;
pub mod harness;
pub mod progress;
pub mod report;
pub mod scenarios;
pub mod sources;
pub mod stats;
pub mod system;

use std::time::Duration;

pub use client::Protocol;
pub use report::Summary;
pub use scenarios::connect::{ConnectArgs, ConnectSummary};
pub use scenarios::download::{DownloadArgs, TransferSummary};
pub use scenarios::prices::{PricesArgs, PricesSummary};
pub use scenarios::upload::UploadArgs;
pub use scenarios::{broadcast::BroadcastArgs, echo::EchoArgs};
pub use sources::SourceAddrs;

use crate::client::{Target, TargetError};
use crate::harness::SetupLimits;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is unusable or does not resolve.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A parameter is out of range.
    #[error("invalid parameter: {0}")]
    Invalid(String),
}

impl From<system::SystemError> for Error {
    fn from(e: system::SystemError) -> Error {
        Error::Invalid(e.to_string())
    }
}

/// The command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sluice-load",
    version,
    about = "Load generator for Sluice and other Phoenix Channels servers"
)]
pub struct Cli {
    /// Options every scenario takes.
    #[command(flatten)]
    pub common: Common,
    /// Print one JSON object to stdout instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Exit 0 even when errors were counted.
    #[arg(long, global = true)]
    pub allow_errors: bool,
    /// Worker threads of the runtime (default: the CPUs this process may use).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// A scenario and its own options.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// C connections, each joined to `echo:load-<i>`, each keeping W requests in flight.
    Echo(EchoArgs),
    /// S subscribers joined to one room, one publisher pushing into it.
    Broadcast(BroadcastArgs),
    /// C idle connections joined to one topic: setup rate and latency, server memory per connection.
    Connect(ConnectArgs),
    /// C connections, each downloading --file over its own `files:` channel, verified.
    Download(DownloadArgs),
    /// C connections, each uploading --size bytes over its own `files:` channel, windowed.
    Upload(UploadArgs),
    /// C connections subscribed to `prices:<asset>` relay channels; upstream-to-client latency.
    Prices(PricesArgs),
}

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Phoenix: the socket URL (`vsn=2.0.0` and the token are appended to
    /// its query). Raw: the base `ws://host:port` (the path is replaced).
    #[arg(
        long,
        global = true,
        default_value = "ws://127.0.0.1:4000/socket/websocket"
    )]
    pub url: String,
    /// Socket token (Phoenix.Token), sent as `?token=`.
    #[arg(long, global = true, conflicts_with = "secret_key_base")]
    pub token: Option<String>,
    /// Mint the token with this secret_key_base instead of passing --token.
    #[arg(long, global = true)]
    pub secret_key_base: Option<String>,
    /// Salt for a minted token.
    #[arg(long, global = true, default_value = sluice::token::SOCKET_SALT)]
    pub token_salt: String,
    /// User id of a minted token.
    #[arg(long, global = true, default_value_t = 1)]
    pub user: i64,
    /// Connections (echo, connect, download, upload, prices) or subscribers (broadcast).
    #[arg(long, short = 'c', global = true, default_value_t = 1)]
    pub connections: usize,
    /// How long to measure, after the warmup (e.g. 10s, 500ms, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Traffic before measuring starts.
    #[arg(long, global = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Longest wait for an answer; also the grace after the end for the last ones.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Longest one connection's handshake and join may take.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Most handshakes in progress at once.
    #[arg(long, global = true, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Wire protocol: `phoenix`, or `raw` for peers implementing only the
    /// /echo /sub /pub contract (echo, broadcast and connect only).
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Phoenix)]
    pub protocol: Protocol,
    /// Local addresses to connect from, in rotation (connection i binds
    /// addr[i mod n]): comma-separated IPs and last-octet ranges such as
    /// 127.0.0.1-127.0.0.20 (at most 256 per range).
    #[arg(long, global = true, value_parser = SourceAddrs::parse)]
    pub source_addrs: Option<SourceAddrs>,
    /// No progress bar on stderr (it is also hidden when stderr is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

impl Common {
    /// The options with their defaults, for `url` (tests and embedding),
    /// except that the progress bar is off.
    pub fn with_url(url: &str) -> Common {
        Common {
            url: url.to_owned(),
            token: None,
            secret_key_base: None,
            token_salt: sluice::token::SOCKET_SALT.to_owned(),
            user: 1,
            connections: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            connect_concurrency: 64,
            protocol: Protocol::Phoenix,
            source_addrs: None,
            no_progress: true,
        }
    }

    /// Check the ranges every scenario relies on.
    pub fn validate(&self) -> Result<(), Error> {
        if self.connections == 0 {
            return Err(Error::Invalid("--connections must be at least 1".into()));
        }
        if self.duration.is_zero() {
            return Err(Error::Invalid("--duration must be positive".into()));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::Invalid("timeouts must be positive".into()));
        }
        Ok(())
    }

    /// The token to present: `--token`, else one minted with `--secret-key-base`.
    pub fn token(&self) -> Option<String> {
        match (&self.token, &self.secret_key_base) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(secret)) => Some(client::mint_token(
                secret,
                &self.token_salt,
                i128::from(self.user),
            )),
            (None, None) => None,
        }
    }

    /// Prepare the connections of a run: raise the open-files limit and
    /// check that `--connections` fit under it ([`system::ensure_fds`]),
    /// then resolve the URL once (per `--protocol`) and attach the source
    /// addresses.
    pub async fn target(&self) -> Result<Target, Error> {
        system::ensure_fds(self.connections as u64)?;
        let target = match self.protocol {
            Protocol::Phoenix => Target::resolve(&self.url, self.token().as_deref()).await?,
            Protocol::Raw => Target::resolve_raw(&self.url).await?,
        };
        Ok(match &self.source_addrs {
            Some(sources) => target.with_sources(sources.clone())?,
            None => target,
        })
    }

    /// `Err(Invalid)` unless the protocol is Phoenix: `scenario` needs
    /// channels the raw contract does not have.
    pub fn require_phoenix(&self, scenario: &str) -> Result<(), Error> {
        match self.protocol {
            Protocol::Phoenix => Ok(()),
            Protocol::Raw => Err(Error::Invalid(format!(
                "the {scenario} scenario needs --protocol phoenix (raw peers only have /echo, /sub and /pub: use echo, broadcast or connect)"
            ))),
        }
    }

    /// Setup limits for the [`harness`] (no ramp).
    pub fn setup_limits(&self) -> SetupLimits {
        SetupLimits {
            concurrency: self.connect_concurrency,
            timeout: self.connect_timeout,
            rate: 0,
            progress: !self.no_progress,
        }
    }
}

/// Run one scenario to completion and summarize it. Bounded in time: setup
/// (each connection at most `--connect-timeout`), warmup, duration, then at
/// most `--timeout` of grace.
pub async fn run(common: &Common, scenario: &Scenario) -> Result<Summary, Error> {
    common.validate()?;
    match scenario {
        Scenario::Echo(args) => scenarios::echo::run(common, args).await,
        Scenario::Broadcast(args) => scenarios::broadcast::run(common, args).await,
        Scenario::Connect(args) => scenarios::connect::run(common, args).await,
        Scenario::Download(args) => scenarios::download::run(common, args).await,
        Scenario::Upload(args) => scenarios::upload::run(common, args).await,
        Scenario::Prices(args) => scenarios::prices::run(common, args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn cli_parses_common_options_anywhere() {
        let cli = Cli::try_parse_from([
            "sluice-load",
            "--connections",
            "3",
            "echo",
            "--window",
            "4",
            "--binary",
            "--duration",
            "1s",
            "--json",
        ])
        .expect("parses");
        assert_eq!(cli.common.connections, 3);
        assert_eq!(cli.common.duration, Duration::from_secs(1));
        assert_eq!(cli.common.warmup, Duration::from_secs(2));
        assert!(cli.json);
        let Scenario::Echo(e) = &cli.scenario else {
            panic!("echo")
        };
        assert_eq!((e.window, e.size, e.binary), (4, 20, true));

        let cli = Cli::try_parse_from(["sluice-load", "broadcast", "--rate", "0", "-c", "10"])
            .expect("parses");
        let Scenario::Broadcast(b) = &cli.scenario else {
            panic!("broadcast")
        };
        assert_eq!((b.rate, b.max_lag, cli.common.connections), (0, 64, 10));
        assert!(Cli::try_parse_from([
            "sluice-load",
            "--token",
            "t",
            "--secret-key-base",
            "s",
            "echo"
        ])
        .is_err());
    }

    #[test]
    fn cli_parses_connect_raw_and_sources() {
        let cli = Cli::try_parse_from([
            "sluice-load",
            "--protocol",
            "raw",
            "connect",
            "-c",
            "100",
            "--rate",
            "500",
            "--server-pid",
            "42",
            "--source-addrs",
            "127.0.0.1-127.0.0.3,127.0.0.9",
            "--no-progress",
        ])
        .expect("parses");
        assert_eq!(cli.common.protocol, Protocol::Raw);
        assert!(cli.common.no_progress);
        assert_eq!(
            cli.common.source_addrs.as_ref().map(SourceAddrs::len),
            Some(4)
        );
        let Scenario::Connect(c) = &cli.scenario else {
            panic!("connect")
        };
        assert_eq!((c.rate, c.server_pid), (500, Some(42)));
        assert_eq!(
            (c.topic.as_str(), c.settle),
            ("room:idle", Duration::from_secs(2))
        );

        let cli = Cli::try_parse_from(["sluice-load", "connect"]).expect("parses");
        assert_eq!(cli.common.protocol, Protocol::Phoenix);
        assert!(!cli.common.no_progress);
        let Scenario::Connect(c) = &cli.scenario else {
            panic!("connect")
        };
        assert_eq!((c.rate, c.server_pid), (0, None));

        for bad in ["127.0.0.9-127.0.0.1", "nope", ""] {
            assert!(
                Cli::try_parse_from(["sluice-load", "--source-addrs", bad, "echo"]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["sluice-load", "--protocol", "mqtt", "echo"]).is_err());
    }

    #[tokio::test]
    async fn raw_mode_refuses_phoenix_only_scenarios() {
        let mut common = Common::with_url("ws://127.0.0.1:9");
        common.protocol = Protocol::Raw;
        for scenario in [
            Scenario::Download(DownloadArgs::new("f")),
            Scenario::Upload(UploadArgs::new(10)),
            Scenario::Prices(PricesArgs::default()),
        ] {
            match run(&common, &scenario).await {
                Err(Error::Invalid(why)) => assert!(why.contains("--protocol phoenix"), "{why}"),
                other => panic!("{scenario:?}: {:?}", other.map(|s| s.to_json())),
            }
        }
        common.connections = usize::MAX / 2;
        match run(&common, &Scenario::Echo(EchoArgs::default())).await {
            Err(Error::Invalid(why)) => assert!(why.contains("open files"), "{why}"),
            other => panic!("{:?}", other.map(|s| s.to_json())),
        }
    }
}
