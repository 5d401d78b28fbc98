//! Accepting connections, for HTTP and HTTPS alike: a cap on open
//! connections, a deadline for each request's headers (which is also the
//! idle keep-alive timeout), a bounded TLS handshake, and a graceful
//! shutdown that waits a bounded time.
//!
//! Written on hyper's connection API rather than `axum::serve` because the
//! latter has neither a connection cap nor a header deadline, and a server
//! any client can reach must have both: without them idle or slow
//! connections pile up until the process runs out of descriptors.

use super::ServerLimits;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long to wait before accepting again after `accept` failed (out of
/// descriptors, say): the failure clears as connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What [`serve`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections accepted and served.
    pub connections: u64,
    /// Connections closed at once because the cap was reached.
    pub refused: u64,
    /// Connections still open when the shutdown grace ran out (cut).
    pub cut_at_shutdown: usize,
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown`
/// resolves, within `limits`. Then it stops accepting, lets requests in
/// flight finish, closes idle connections, and returns once all are done
/// or `limits.shutdown_grace` has passed, whichever is first.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<ServeReport> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut report = ServeReport::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed; retrying shortly");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once: it costs one
        // descriptor for an instant, never a slot.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            report.refused += 1;
            drop(stream);
            continue;
        };
        report.connections += 1;
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let header_timeout = limits.header_timeout;
        match &acceptor {
            None => {
                let connection =
                    graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // The handshake shares the headers' deadline.
                    let handshake =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                    if let Ok(Ok(tls)) = handshake {
                        let connection = http.serve_connection(TokioIo::new(tls), service);
                        let _ = watcher.watch(connection).await;
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(
            connections = open,
            "shutting down: finishing requests in flight"
        );
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            report.cut_at_shutdown = slots.available_permits().abs_diff(limits.max_connections.max(1));
            tracing::warn!(
                connections = report.cut_at_shutdown,
                grace_seconds = limits.shutdown_grace.as_secs_f64(),
                "shutting down: connections still open after the grace period are cut"
            );
        }
    }
    Ok(report)
}
