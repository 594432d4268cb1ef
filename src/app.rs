//! Shared server state: what every connection needs, built once at start.
//!
//! # Contract
//! * Built from a validated [`Config`] by [`App::new`]; immutable afterwards
//!   except for the session registry and the draining flag.
//! * The session registry maps connection ids to their outboxes so the
//!   drainer can close every socket; entries are removed when a session ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::channel::Registry;
use crate::config::Config;
use crate::files::Files;
use crate::metrics::Metrics;
use crate::pubsub::PubSub;
use crate::router::Router;
use crate::token;
use crate::transport::outbox::Outbox;

/// Shared state.
pub struct App {
    /// The configuration.
    pub config: Config,
    /// Topic routes.
    pub router: Router,
    /// Local fan-out.
    pub pubsub: PubSub,
    /// Derived token key for `secret_key_base` + salt.
    pub token_key: token::Key,
    /// Token verification options.
    pub token_opts: token::VerifyOptions,
    /// The effective API key.
    pub api_key: String,
    /// Metric handles.
    pub metrics: Metrics,
    /// Downloads, uploads and the raw socket.
    pub files: Arc<Files>,
    /// Set once shutdown starts: readiness fails, new sockets are refused.
    pub draining: AtomicBool,
    sessions: Mutex<HashMap<u64, Arc<Outbox>>>,
    next_id: AtomicU64,
}

impl App {
    /// Build the state. `secret` and `api_key` are the effective values (the
    /// binary generates them when the config has none).
    pub fn new(
        config: Config,
        registry: &Registry,
        secret: &str,
        api_key: String,
        files: Arc<Files>,
    ) -> Result<App, String> {
        let router = Router::new(&config.routes, registry)?;
        let metrics = Metrics::new();
        let token_key = token::Key::derive(secret.as_bytes(), config.token_salt.as_bytes());
        let token_opts = token::VerifyOptions {
            max_age: Some(token::MaxAge::Seconds(config.token_max_age.as_secs())),
            max_future_skew_ms: u64::try_from(config.token_max_skew.as_millis())
                .unwrap_or(u64::MAX),
        };
        Ok(App {
            router,
            pubsub: PubSub::new(metrics.clone()),
            token_key,
            token_opts,
            api_key,
            metrics,
            files,
            draining: AtomicBool::new(false),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            config,
        })
    }

    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Register a live socket.
    pub fn register(&self, id: u64, outbox: Arc<Outbox>) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, outbox);
    }

    /// Forget a socket.
    pub fn unregister(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Snapshot of the live sockets' outboxes (for the drainer).
    pub fn live_sockets(&self) -> Vec<Arc<Outbox>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Close (1001) every socket that sent nothing for `idle_ms`; returns how
    /// many were closed. Called by the server's idle sweep.
    pub fn close_idle(&self, now_ms: u64, idle_ms: u64) -> usize {
        // Pick them under the lock, close them after it (closing drops the
        // socket's queued streams, which may unmap files).
        let idle: Vec<Arc<Outbox>> = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|o| o.is_idle(now_ms, idle_ms))
            .cloned()
            .collect();
        idle.iter()
            .filter(|o| o.close_if_idle(now_ms, idle_ms))
            .count()
    }

    /// Number of live sockets.
    pub fn live_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}
