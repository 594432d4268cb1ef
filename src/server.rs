//! Accept loop, connection limit, hyper HTTP/1 with upgrades, graceful drain.
//!
//! # Contract
//! * At most `max_connections` connections at once; the permit lives inside
//!   the connection (and its socket tasks) and is released when they end. A
//!   connection over the limit is closed at once and counted.
//! * Shutdown, once `shutdown` resolves: readiness fails and new sockets are
//!   refused (503) while plain HTTP is still answered → sockets are told to
//!   close with 1012 in batches of `drain_batch_size` every
//!   `drain_batch_interval` → once they are gone (at most `drain_grace`) the
//!   listener closes → wait for every tracked task, at most `drain_grace` →
//!   return. Nothing is spawned untracked.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::http::Routes;
use crate::transport::outbox::close_code;

/// Close sockets that sent nothing (not even a heartbeat) for `idle_timeout`,
/// checking every eighth of it (between 100 ms and 1 s). One task for all
/// sockets: a socket carries no timer of its own.
async fn idle_sweep(app: Arc<App>, stop: CancellationToken) {
    let idle = app.config.idle_timeout;
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let every = (idle / 8).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let closed = app.close_idle(crate::clock::mono_ms(), idle_ms);
        if closed > 0 {
            app.metrics.idle_timeouts.increment(closed as u64);
            tracing::debug!(closed, "idle sockets closed");
        }
    }
}

/// Serve until `shutdown` resolves, then drain.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let tracker = TaskTracker::new();
    let stop_http = CancellationToken::new();
    let routes = Routes {
        app: app.clone(),
        prometheus: crate::metrics::install(),
        tracker: tracker.clone(),
    };
    let limit = Arc::new(Semaphore::new(app.config.max_connections));
    tokio::pin!(shutdown);
    // Stays pending until shutdown starts; then runs the socket drain while the
    // accept loop keeps answering plain HTTP (readiness says 503, upgrades are
    // refused), so load balancers see the node leave before it disappears.
    let stop_sweep = CancellationToken::new();
    tracker.spawn(idle_sweep(app.clone(), stop_sweep.clone()));
    let drain_sockets = async {
        (&mut shutdown).await;
        stop_sweep.cancel();
        app.draining.store(true, Ordering::Release);
        close_sockets(&app).await;
    };
    tokio::pin!(drain_sockets);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut drain_sockets => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            crate::metrics::connect_rejected("limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let permit = Arc::new(permit);
        let routes = routes.clone();
        let stop = stop_http.clone();
        tracker.spawn(async move {
            let svc_permit = permit.clone();
            let service = service_fn(move |req| {
                let routes = routes.clone();
                let permit = svc_permit.clone();
                async move { Ok::<_, std::convert::Infallible>(routes.handle(req, Some(permit)).await) }
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
                        tracing::debug!(%peer, error = %e, "http connection error");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    finish(&app, &tracker, &stop_http).await;
}

/// Tell every socket to close (1012) in batches, then wait until they are
/// gone or the grace period is over.
async fn close_sockets(app: &App) {
    let cfg = &app.config;
    let sockets = app.live_sockets();
    tracing::info!(
        sockets = sockets.len(),
        "draining: closing sockets with 1012"
    );
    let deadline = tokio::time::Instant::now() + cfg.drain_grace;
    for (i, batch) in sockets.chunks(cfg.drain_batch_size).enumerate() {
        if i > 0 {
            tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + cfg.drain_batch_interval),
            )
            .await;
        }
        for outbox in batch {
            outbox.close(close_code::RESTART, "server restart");
        }
        crate::metrics::disconnect_many("drain", batch.len() as u64);
    }
    while app.live_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A socket that was being accepted when the drain started registers
        // late: close it too (closing twice is a no-op).
        for outbox in app.live_sockets() {
            outbox.close(close_code::RESTART, "server restart");
        }
    }
}

/// Stop the HTTP connections and wait for every tracked task (bounded).
async fn finish(app: &App, tracker: &TaskTracker, stop_http: &CancellationToken) {
    stop_http.cancel();
    tracker.close();
    if tokio::time::timeout(app.config.drain_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = app.live_count(),
            "drain grace elapsed; exiting with sockets still open"
        );
    } else {
        tracing::info!("drained");
    }
}
