//! Sluice: a binary streaming gateway that speaks the Phoenix Channels wire
//! protocol, so the official `phoenix` JavaScript client connects to it
//! unmodified.
//!
//! # Layout
//! * [`protocol`]: sans-IO Phoenix serializers (V1 JSON, V2 JSON, V2 binary).
//! * [`token`]: sans-IO Phoenix.Token sign/verify (Erlang term subset).
//! * [`config`]: typed configuration, flags > env > file > defaults.
//! * [`server`]: accept loop, connection limit, graceful drain.
//! * [`http`]: which path goes where; [`api`]: the publish API.
//! * [`transport`]: WebSocket upgrade, reader and writer tasks, bounded outbox.
//! * [`session`]: one socket's channels and Phoenix control-event semantics.
//! * [`channel`]: the public [`channel::Channel`] trait; [`channels`]: built-in kinds.
//! * [`router`]: topic patterns → channel kinds and join rules.
//! * [`pubsub`]: local fan-out, encode once, share bytes.
//! * [`metrics`]: metric families with bounded labels.
//! * [`stream`]: file streaming building blocks (chunk plans, safe paths).
//! * [`files`]: the `files` channel (zero-copy downloads, windowed uploads) and the raw socket.
//! * [`relay`]: the pooled upstream price relay (feed parser, backoff, built-in mock feed).
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> Result<(), sluice::Error> {
//! let config = sluice::config::Config::defaults();
//! let listener = tokio::net::TcpListener::bind(config.listen).await?;
//! sluice::Sluice::new(config)?
//!     .secrets("a-secret-key-base-of-at-least-20-bytes", "api-key")
//!     .run(listener, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await
//! # }
//! ```

pub mod api;
pub mod app;
pub mod channel;
pub mod channels;
pub mod clock;
pub mod config;
pub mod dev;
pub mod files;
pub mod http;
pub mod metrics;
pub mod origin;
pub mod protocol;
pub mod pubsub;
pub mod relay;
pub mod router;
pub mod server;
pub mod session;
pub mod stream;
pub mod token;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::channel::{ChannelKind, Registry};
use crate::config::Config;

/// Errors from starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration refers to something that does not exist.
    #[error("configuration: {0}")]
    Config(String),
    /// An I/O error (binding, secrets file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A configured server, ready to run.
pub struct Sluice {
    config: Config,
    files: Arc<files::Files>,
    relay: Arc<relay::pool::Relay>,
    registry: Registry,
    secret: Option<String>,
    api_key: Option<String>,
}

impl Sluice {
    /// A server with the built-in channel kinds. Creates the files and
    /// uploads directories (and, with the default files directory, the demo
    /// sample files) if they are missing.
    pub fn new(config: Config) -> Result<Sluice, Error> {
        // The recorder must exist before metric handles are resolved (here and
        // in `run`), or they resolve to no-ops.
        let _ = metrics::install();
        let files = Arc::new(files::Files::new(&config).map_err(|e| {
            Error::Config(format!(
                "files_dir {} / uploads_dir {}: {e}",
                config.files_dir.display(),
                config.uploads_dir.display()
            ))
        })?);
        let connector = relay::client::Connector::new(&relay::client::ClientConfig {
            extra_ca: (!config.upstream_ca_file.is_empty())
                .then(|| std::path::PathBuf::from(&config.upstream_ca_file)),
            ..Default::default()
        })
        .map_err(|e| Error::Config(format!("upstream_ca_file: {e}")))?;
        let relay = Arc::new(relay::pool::Relay::new(
            relay::pool::RelaySettings {
                linger: config.upstream_linger,
                max_connections: config.upstream_max_connections,
                backoff: relay::backoff::Settings {
                    base: config.upstream_backoff_base,
                    max: config.upstream_backoff_max,
                    ..Default::default()
                },
                silence_timeout: config.upstream_silence_timeout,
            },
            connector,
            (config.upstream != "simulate").then(|| config.upstream.clone()),
        ));
        let mut registry = Registry::with_builtins();
        registry.insert(
            "prices",
            Arc::new(relay::channel::PricesKind::new(relay.clone())),
        );
        registry.insert(
            "files",
            Arc::new(files::channel::FilesKind::new(files.clone())),
        );
        Ok(Sluice {
            secret: config.secret_key_base.clone(),
            api_key: config.api_key.clone(),
            config,
            files,
            relay,
            registry,
        })
    }

    /// Add a channel kind that routes can name.
    pub fn channel_kind(mut self, name: &str, kind: Arc<dyn ChannelKind>) -> Sluice {
        self.registry.insert(name, kind);
        self
    }

    /// Set the effective secret_key_base and API key (overrides the config).
    pub fn secrets(mut self, secret_key_base: &str, api_key: &str) -> Sluice {
        self.secret = Some(secret_key_base.to_owned());
        self.api_key = Some(api_key.to_owned());
        self
    }

    /// Check the routes against the channel kinds without serving.
    pub fn check(&self) -> Result<(), Error> {
        router::Router::new(&self.config.routes, &self.registry)
            .map(|_| ())
            .map_err(Error::Config)
    }

    /// Serve on `listener` until `shutdown` resolves, then drain and return.
    /// Missing secrets come from the development secrets file ([`dev`]).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let (secret, api_key) = match (self.secret, self.api_key) {
            (Some(s), Some(k)) => (s, k),
            (secret, api_key) => {
                let dev = dev::load_or_create()?;
                if secret.is_none() {
                    tracing::warn!(
                        file = %dev.path.display(),
                        "NO secret_key_base CONFIGURED: using a generated DEVELOPMENT secret. \
                         Set --secret-key-base / SLUICE_SECRET_KEY_BASE in production."
                    );
                }
                if api_key.is_none() {
                    tracing::warn!(
                        file = %dev.path.display(),
                        "no api_key configured: POST /api/broadcast uses the generated development key from the file"
                    );
                }
                (
                    secret.unwrap_or(dev.secret_key_base),
                    api_key.unwrap_or(dev.api_key),
                )
            }
        };
        // Install the recorder before any metric handle is resolved.
        let _ = metrics::install();
        // The simulated upstream: a real WebSocket server on loopback, reached
        // through the same client path as a real feed. Lives as long as `run`.
        let _simulated = if self.config.upstream == "simulate" {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            let mock = relay::mock::MockUpstream::start(
                listener,
                relay::mock::MockOptions {
                    rate_hz: self.config.simulate_rate,
                    assets: self.config.simulate_assets.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::Config(format!("simulated upstream: {e}")))?;
            let url = format!("ws://{}/prices?assets={{assets}}", mock.local_addr());
            tracing::info!(url, "simulated upstream feed");
            self.relay.set_template(url);
            Some(mock)
        } else {
            None
        };
        let files = self.files.clone();
        let app = app::App::new(self.config, &self.registry, &secret, api_key, files)
            .map_err(Error::Config)?;
        let app = Arc::new(app);
        tokio::spawn(files::sweep::run(
            app.files.clone(),
            app.config.partial_max_age,
        ));
        tracing::info!(addr = %listener.local_addr()?, "listening");
        server::serve(app, listener, shutdown).await;
        Ok(())
    }
}
