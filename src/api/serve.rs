//! The API's HTTP server: axum's router on hyper, with the limits a
//! public listener needs (`[server]`):
//!
//! - at most `max_connections` connections at once: beyond it hookd stops
//!   accepting, and new clients wait in the kernel's listen backlog;
//! - `header_read_timeout` for a request's head, which also bounds how long
//!   an idle keep-alive connection may wait for its next request;
//! - `idle_timeout` for an HTTP/2 connection with no request in progress
//!   (its keep-alive pings are not use): it is closed with GOAWAY, freeing
//!   its slot, and `http2_max_streams` caps its requests in progress;
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
        .max_concurrent_streams(config.http2_max_streams)
        .keep_alive_interval(Some(config.header_read_timeout))
        .keep_alive_timeout(config.header_read_timeout);
    let idle_timeout = config.idle_timeout;
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
        let activity = Arc::new(Activity::new());
        let service = TowerToHyperService::new(Tracked {
            app: app.clone(),
            activity: activity.clone(),
        });
        let stop = shutdown.clone();
        match &tls {
            None => {
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                connections.spawn(async move {
                    drive(connection, &activity, idle_timeout, &stop).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, bounded like
                // a request's head, so a silent client holds nothing else.
                let handshake = tokio::time::timeout(config.header_read_timeout, acceptor.accept(stream));
                let builder = builder.clone();
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
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    drive(connection, &activity, idle_timeout, &stop).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    // Every connection was told to finish (`drive` saw `shutdown`): wait
    // for them, at most the shutdown timeout.
    let drained = async { while connections.join_next().await.is_some() {} };
    tokio::select! {
        _ = drained => {}
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

/// What a connection is doing: requests in progress, and when it last
/// started or finished one. HTTP/2 keep-alive pings are not requests, so a
/// client that only answers them is idle.
struct Activity {
    /// When the connection was accepted; times below are ms since.
    born: tokio::time::Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: tokio::time::Instant::now(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// When the connection will have been idle for `idle`, if nothing
    /// happens meanwhile; `None` while a request is in progress.
    fn idle_at(&self, idle: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
        Some(self.born + last + idle)
    }
}

/// Counts a request in progress on its connection while alive.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        activity.touch();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The router, counting each request on its connection's [`Activity`]
/// until its answer's head is ready (a streamed body goes on after; a
/// graceful close lets it finish).
#[derive(Clone)]
struct Tracked {
    app: Router,
    activity: Arc<Activity>,
}

impl tower::Service<Request<hyper::body::Incoming>> for Tracked {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let guard = InFlight::new(self.activity.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let answer = tower::ServiceExt::oneshot(app, request.map(axum::body::Body::new)).await;
            drop(guard);
            answer
        })
    }
}

/// Serves one connection to its end. It is closed gracefully (HTTP/2
/// GOAWAY, HTTP/1.1 after the answer in progress) when the server stops,
/// or once it has had no request in progress for `idle` (which HTTP/1.1's
/// own `header_read_timeout` usually ends sooner).
async fn drive<I>(
    connection: hyper_util::server::conn::auto::UpgradeableConnection<
        'static,
        I,
        TowerToHyperService<Tracked>,
        TokioExecutor,
    >,
    activity: &Activity,
    idle: Duration,
    stop: &CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    loop {
        let idle_at = activity.idle_at(idle);
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = sleep_until(idle_at, idle), if !closing => {
                if activity.idle_at(idle).is_some_and(|at| at <= tokio::time::Instant::now()) {
                    tracing::debug!(idle = ?idle, "closing a connection idle for server.idle_timeout");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Sleeps until `at`, or for `idle` while a request is in progress (when
/// the connection is looked at again).
async fn sleep_until(at: Option<tokio::time::Instant>, idle: Duration) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => tokio::time::sleep(idle).await,
    }
}
