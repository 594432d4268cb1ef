//! Which path goes where; no business logic.
//!
//! | path | what |
//! |---|---|
//! | `{socket_path}/websocket` | Phoenix socket (WebSocket upgrade) |
//! | `{raw_socket_path}` | raw upload socket ([`crate::files::raw`]) |
//! | `/api/broadcast` | publish API ([`crate::api`]) |
//! | `/healthz` | liveness: 200 while the process serves |
//! | `/readyz` | readiness: 503 once draining |
//! | `/metrics` | Prometheus text format |
//! | `/` | landing page |
//! | `/sluice-files.js` | browser helper module (`web/sluice-files.js`) |

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::transport::websocket;

/// Per-server context for routing.
#[derive(Clone)]
pub struct Routes {
    /// Shared state.
    pub app: Arc<App>,
    /// Renders `/metrics`.
    pub prometheus: Option<PrometheusHandle>,
    /// Tracks socket tasks for the drain.
    pub tracker: TaskTracker,
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

const INDEX: &str = include_str!("../web/index.html");
/// The browser helper for downloads and uploads (docs/FILES.md).
const FILES_JS: &str = include_str!("../web/sluice-files.js");

impl Routes {
    /// Route one request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        permit: Option<Arc<OwnedSemaphorePermit>>,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if let Some(mount) = path.strip_suffix("/websocket") {
            if self.app.config.socket_paths.iter().any(|p| p == mount) {
                return websocket::upgrade(
                    self.app.clone(),
                    req,
                    &self.tracker,
                    permit,
                    websocket::Mode::Phoenix,
                );
            }
        }
        let raw = &self.app.config.raw_socket_path;
        if !raw.is_empty() && (path == raw || path.strip_suffix("/websocket") == Some(raw)) {
            return websocket::upgrade(
                self.app.clone(),
                req,
                &self.tracker,
                permit,
                websocket::Mode::Raw,
            );
        }
        match path {
            "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" if self.app.is_draining() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            }
            "/readyz" => text(StatusCode::OK, "text/plain", "ready\n"),
            "/metrics" => match &self.prometheus {
                Some(h) => text(StatusCode::OK, "text/plain; version=0.0.4", h.render()),
                None => text(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "metrics recorder not installed\n",
                ),
            },
            "/api/broadcast" => crate::api::broadcast(&self.app, req).await,
            "/" | "/index.html" => text(StatusCode::OK, "text/html; charset=utf-8", INDEX),
            "/sluice-files.js" => text(StatusCode::OK, "text/javascript; charset=utf-8", FILES_JS),
            _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}
