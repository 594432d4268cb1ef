//! The `sluice` binary: parse the command line, set up logging, run.
//!
//! Exit codes: 0 after a clean drain, 64 for invalid usage or configuration,
//! 1 for runtime failures (e.g. the port is taken).

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use sluice::config::{Config, Flags, LogFormat};

/// Sluice: a binary streaming gateway that speaks the Phoenix Channels protocol.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the Phoenix socket and the HTTP endpoints (the default).
    Serve {
        #[command(flatten)]
        flags: Flags,
    },
    /// Print a Phoenix.Token for a user id, signed with the configured secret.
    Token {
        /// The user id (an integer id is signed as an integer, like Phoenix apps do).
        #[arg(long)]
        user: String,
        #[command(flatten)]
        flags: Flags,
    },
    /// Run the built-in upstream price feed (coincap format, random walk) as a
    /// standalone WebSocket server, for tests and load tests.
    MockUpstream(MockArgs),
}

#[derive(clap::Args, Debug)]
struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4100")]
    listen: std::net::SocketAddr,
    /// Price ticks per second (every served asset moves on each tick).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// The catalogue, comma-separated: what `assets=ALL` serves.
    #[arg(long, value_delimiter = ',')]
    assets: Option<Vec<String>>,
    /// Seed for reproducible prices.
    #[arg(long)]
    seed: Option<u64>,
    /// Send nothing for assets outside the catalogue (as coincap does).
    #[arg(long)]
    ignore_unknown: bool,
}

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let (command, flags) = match cli.command {
        None => ("serve", cli.flags),
        Some(Command::Serve { flags }) => ("serve", flags),
        Some(Command::Token { user, flags }) => return token(&user, &flags),
        Some(Command::MockUpstream(args)) => return mock_upstream(args),
    };
    debug_assert_eq!(command, "serve");
    let config = match Config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    init_tracing(&config);
    let server = match sluice::Sluice::new(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(e) = server.check() {
        eprintln!("sluice: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let shutdown = shutdown_signal();
        server.run(listener, shutdown).await?;
        Ok(())
    });
    // Blocking work still running (a digest of a large file, an upload
    // write) must not keep the process past the drain.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sluice stopped");
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(user: &str, flags: &Flags) -> ExitCode {
    let config = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let secret = match config.secret_key_base.clone() {
        Some(s) => s,
        None => match sluice::dev::load_or_create() {
            Ok(dev) => {
                eprintln!(
                    "sluice: no secret_key_base configured; signing with the development secret in {}",
                    dev.path.display()
                );
                dev.secret_key_base
            }
            Err(e) => {
                eprintln!("sluice: cannot read the development secrets: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let key = sluice::token::Key::derive(secret.as_bytes(), config.token_salt.as_bytes());
    let data = match user.parse::<i64>() {
        Ok(n) => sluice::token::Term::Int(i128::from(n)),
        Err(_) => sluice::token::Term::Binary(user.as_bytes().to_vec()),
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let max_age = sluice::token::MaxAge::Seconds(config.token_max_age.as_secs());
    println!("{}", sluice::token::sign(&key, &data, now_ms, max_age));
    ExitCode::SUCCESS
}

fn mock_upstream(args: MockArgs) -> ExitCode {
    use sluice::relay::mock::{MockOptions, MockUpstream};
    let defaults = MockOptions::default();
    let opts = MockOptions {
        rate_hz: args.rate,
        assets: args.assets.unwrap_or(defaults.assets),
        seed: args.seed,
        serve_unknown: !args.ignore_unknown,
    };
    if let Err(e) = opts.validate() {
        eprintln!("sluice mock-upstream: {e}");
        return ExitCode::from(EX_USAGE);
    }
    init_tracing(&Config::defaults());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let shutdown = shutdown_signal();
        let mock = MockUpstream::start(listener, opts).await?;
        tracing::info!(addr = %mock.local_addr(), seed = mock.seed(), "mock upstream listening");
        shutdown.await;
        mock.shutdown().await;
        tracing::info!("mock upstream stopped");
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice mock-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Register the signal handlers now (before the server says it is
/// listening, so an early SIGTERM is a drain, not a kill) and return the
/// future that resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM: draining"),
                        _ = int.recv() => tracing::info!("SIGINT: draining"),
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
