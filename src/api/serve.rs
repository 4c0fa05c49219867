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
//!   their connections are closed;
//! - HTTPS only when `tls_cert` and `tls_key` are set ([`tls_acceptor`]):
//!   HTTP/2 or HTTP/1.1 by ALPN, the handshake bounded by
//!   `header_read_timeout`.

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

/// A TLS acceptor for `server.tls_cert` and `server.tls_key`, or `None`
/// when they are not set; an error names the key and the file.
pub fn tls_acceptor(config: &ServerConfig) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let pem = std::fs::read(cert).with_context(|| format!("server.tls_cert: cannot read {}", cert.display()))?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("server.tls_cert: {} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "server.tls_cert: {} holds no certificate",
        cert.display()
    );
    let pem = std::fs::read(key).with_context(|| format!("server.tls_key: cannot read {}", key.display()))?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("server.tls_key: {} holds no PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!(
                "server.tls_key: {} does not match server.tls_cert {}",
                key.display(),
                cert.display()
            )
        })?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}

/// Serves `app` on `listener` under `config`'s limits until `shutdown`,
/// then lets requests in progress finish for at most
/// `config.shutdown_timeout`. With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &ServerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let app = app.layer(axum::middleware::from_fn({
        let limit = config.request_timeout;
        move |request, next| time_limit(limit, request, next)
    }));
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    // Every connection's task, so that none outlives the server (each
    // holds the API's state: the queue, the log).
    let mut connections = tokio::task::JoinSet::new();
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
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(app.clone());
        match &tls {
            None => {
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, bounded like
                // a request's head, so a silent client holds nothing else.
                let handshake = tokio::time::timeout(config.header_read_timeout, acceptor.accept(stream));
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                connections.spawn(async move {
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
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
    // Closes what is left: connections past the timeout, and handshakes
    // that never finished.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
