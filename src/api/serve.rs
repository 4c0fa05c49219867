//! The API's HTTP server: axum's router on hyper, with the limits a
//! public listener needs (`[server]`):
//!
//! - at most `max_connections` connections at once: beyond it hookd stops
//!   accepting, and new clients wait in the kernel's listen backlog;
//! - `header_read_timeout` for a request's head, which also bounds how long
//!   an idle keep-alive connection may wait for its next request;
//! - `request_timeout` for a whole request, its body read included (a
//!   trickling body gets a 408);
//! - a bounded shutdown: requests in progress get `shutdown_timeout`, then
//!   their connections are closed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::ApiError;
use crate::config::ServerConfig;

/// How long to wait before accepting again after `accept` failed (out of
/// descriptors, say), so a failing accept does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Bounds every request by `limit`: past it, a 408 `request_timeout`.
pub async fn time_limit(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took over {} (server.request_timeout): send the body at once",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
}

/// Serves `app` on `listener` under `config`'s limits until `shutdown`,
/// then lets requests in progress finish for at most
/// `config.shutdown_timeout`.
pub async fn serve(listener: TcpListener, app: Router, config: &ServerConfig, shutdown: CancellationToken) {
    let app = app.layer(axum::middleware::from_fn({
        let limit = config.request_timeout;
        move |request, next| time_limit(limit, request, next)
    }));
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.header_read_timeout))
        .keep_alive_timeout(config.header_read_timeout);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(config.shutdown_timeout) => {
            tracing::warn!(
                timeout = %humantime::format_duration(config.shutdown_timeout),
                "requests still in progress at the end of server.shutdown_timeout: their connections are closed"
            );
        }
    }
}
