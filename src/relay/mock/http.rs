//! The mock's HTTP side: accept loop, routes, test controls, the upgrade.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{socket, Control, Shared, Subscription, MAX_ASSETS};
use crate::relay::feed;

/// Largest `POST /control/inject` body.
const MAX_INJECT: usize = 64 << 10;

/// The assets of a `/prices` query, or why the request is refused.
pub(super) fn requested_assets(
    query: Option<&str>,
    catalogue: &[String],
) -> Result<Vec<String>, &'static str> {
    let list = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "assets")
        .map(|(_, v)| v.into_owned())
        .ok_or("missing assets parameter")?;
    if list == "ALL" {
        return Ok(catalogue.to_vec());
    }
    let mut seen = HashSet::new();
    let mut assets = Vec::new();
    for asset in list.split(',').map(str::trim) {
        if feed::valid_asset(asset) && seen.insert(asset) {
            if assets.len() == MAX_ASSETS {
                return Err("too many assets");
            }
            assets.push(asset.to_owned());
        }
    }
    if assets.is_empty() {
        return Err("no valid asset");
    }
    Ok(assets)
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "mock upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shared, stop, inner) = (shared.clone(), stop.clone(), tracker.clone());
        tracker.spawn(async move {
            let svc_stop = stop.clone();
            let service = service_fn(move |req| {
                let response = route(req, shared.clone(), svc_stop.clone(), inner.clone());
                async move { Ok::<_, Infallible>(response.await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "mock upstream http error");
                    }
                }
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn respond(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r
}

async fn route(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/prices") => upgrade(req, shared, &stop, &tracker),
        (&Method::GET, "/stats") => match serde_json::to_vec(&shared.stats()) {
            Ok(body) => {
                let mut r = respond(StatusCode::OK, body);
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(_) => respond(StatusCode::INTERNAL_SERVER_ERROR, ""),
        },
        (&Method::POST, path) if path.starts_with("/control/") => control(req, &shared).await,
        _ => respond(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn control(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let verb = req.uri().path().trim_start_matches("/control/").to_owned();
    let send = |c: Control| {
        let _ = shared.control.send(c);
    };
    match verb.as_str() {
        "silent" => shared.silent.store(true, Ordering::Relaxed),
        "live" => shared.silent.store(false, Ordering::Relaxed),
        "refuse" => shared.refuse.store(true, Ordering::Relaxed),
        "accept" => shared.refuse.store(false, Ordering::Relaxed),
        "drop" => send(Control::Drop),
        "inject" => match Limited::new(req.into_body(), MAX_INJECT).collect().await {
            Ok(body) => match String::from_utf8(body.to_bytes().to_vec()) {
                Ok(text) => send(Control::Inject(Arc::from(text))),
                Err(_) => return respond(StatusCode::BAD_REQUEST, "body is not UTF-8\n"),
            },
            Err(_) => return respond(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
        },
        _ => return respond(StatusCode::NOT_FOUND, "unknown control\n"),
    }
    tracing::info!(control = verb, "mock upstream control");
    respond(StatusCode::NO_CONTENT, "")
}

fn upgrade(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return respond(StatusCode::UPGRADE_REQUIRED, "WebSocket only\n");
    }
    if shared.refuse.load(Ordering::Relaxed) || stop.is_cancelled() {
        return respond(StatusCode::SERVICE_UNAVAILABLE, "refusing\n");
    }
    let assets = match requested_assets(req.uri().query(), &shared.catalogue) {
        Ok(a) => a,
        Err(reason) => return respond(StatusCode::BAD_REQUEST, format!("{reason}\n")),
    };
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return respond(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // Counted before the 101 goes out, so a client that sees the upgrade
    // also sees itself in the counters.
    let sub = Subscription::open(shared.clone(), assets);
    let control = shared.control.subscribe();
    let stop = stop.clone();
    tracker.spawn(async move {
        match fut.await {
            Ok(ws) => socket::run(ws.into_inner(), sub, control, stop).await,
            Err(e) => tracing::debug!(error = %e, "mock upstream upgrade failed"),
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let cat: Vec<String> = vec!["bitcoin".into(), "ethereum".into()];
        let q = |s: &str| requested_assets(Some(s), &cat);
        assert_eq!(q("assets=bitcoin,solana").unwrap(), ["bitcoin", "solana"]);
        assert_eq!(
            q("x=1&assets=bitcoin%2Csolana, bitcoin,BAD,,x y").unwrap(),
            ["bitcoin", "solana"]
        );
        assert_eq!(q("assets=ALL").unwrap(), cat);
        assert!(q("assets=").is_err());
        assert!(q("assets=BAD").is_err());
        assert!(q("other=1").is_err());
        assert!(requested_assets(None, &cat).is_err());
        let many: Vec<String> = (0..=MAX_ASSETS).map(|i| format!("a{i}")).collect();
        assert_eq!(
            q(&format!("assets={}", many.join(","))),
            Err("too many assets")
        );
        let max = &many[..MAX_ASSETS];
        assert_eq!(
            q(&format!("assets={}", max.join(","))).unwrap().len(),
            MAX_ASSETS
        );
    }
}
