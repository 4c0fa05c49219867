//! A real HTTP receiver for tests: verifies every request's signature with
//! `hookd::sign::Verifier`, records what arrived, and answers as told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hookd::sign::Verifier;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The secret every test subscription signs with.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// This status, with these headers.
    Status(u16, Vec<(&'static str, String)>),
    /// Answer 204 after a delay.
    Slow(Duration),
    /// Never answer.
    Hang,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer::Status(204, vec![])
    }
}

/// One request that arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// The path segment (the subscription the test routed there).
    pub path: String,
    /// The query string, if the URL had one.
    pub query: Option<String>,
    /// `webhook-id`.
    pub id: String,
    /// All headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Whether the signature and digest verified.
    pub verified: bool,
    /// When it arrived.
    pub at: Instant,
    /// Which attempt of this (path, id) it was, from 1.
    pub attempt: u32,
}

impl Arrival {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

type Policy = dyn Fn(&str, &str, u32) -> Answer + Send + Sync;

struct Inner {
    verifier: Verifier,
    /// Verifiers of paths whose subscription has a secret of its own.
    by_path: Mutex<HashMap<String, Arc<Verifier>>>,
    arrivals: Mutex<Vec<Arrival>>,
    counts: Mutex<HashMap<(String, String), u32>>,
    policy: Mutex<Arc<Policy>>,
}

/// A receiver on a free loopback port; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Receiver {
    /// A receiver answering 204 to everything.
    pub async fn start() -> Receiver {
        Self::start_with(|_, _, _| Answer::ok()).await
    }

    /// A receiver answering by `policy(path, webhook_id, attempt)`.
    pub async fn start_with(policy: impl Fn(&str, &str, u32) -> Answer + Send + Sync + 'static) -> Receiver {
        let inner = Arc::new(Inner {
            verifier: Verifier::new(&[SECRET]).expect("valid secret"),
            by_path: Mutex::new(HashMap::new()),
            arrivals: Mutex::new(Vec::new()),
            counts: Mutex::new(HashMap::new()),
            policy: Mutex::new(Arc::new(policy)),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = Router::new().route("/{path}", post(handle)).with_state(inner.clone());
        let token = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .ok();
        });
        Receiver { addr, inner, stop }
    }

    /// Verifies requests to `path` with `secrets` instead of [`SECRET`] (a
    /// subscription made through the API has a secret of its own).
    pub fn trust(&self, path: &str, secrets: &[&str]) {
        let verifier = Verifier::new(secrets).expect("valid secrets");
        self.inner
            .by_path
            .lock()
            .unwrap()
            .insert(path.to_owned(), Arc::new(verifier));
    }

    /// Changes how the receiver answers from now on.
    pub fn answer_with(&self, policy: impl Fn(&str, &str, u32) -> Answer + Send + Sync + 'static) {
        *self.inner.policy.lock().unwrap() = Arc::new(policy);
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Everything that arrived so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.inner.arrivals.lock().unwrap().clone()
    }

    /// Arrivals answered with 2xx... as counted by the test's own policy:
    /// here, all arrivals at `path`.
    pub fn at(&self, path: &str) -> Vec<Arrival> {
        self.arrivals().into_iter().filter(|a| a.path == path).collect()
    }

    /// Waits until `check` holds over the arrivals, or panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, what: &str, check: impl Fn(&[Arrival]) -> bool) -> Vec<Arrival> {
        let deadline = Instant::now() + limit;
        loop {
            let arrivals = self.arrivals();
            if check(&arrivals) {
                return arrivals;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}; {} arrivals: {:#?}",
                    arrivals.len(),
                    arrivals.iter().map(|a| (&a.path, &a.id, a.attempt)).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let own = inner.by_path.lock().unwrap().get(&path).cloned();
    let verified = match own {
        Some(verifier) => verifier.verify(&headers, &body).is_ok(),
        None => inner.verifier.verify(&headers, &body).is_ok(),
    };
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let attempt = {
        let mut counts = inner.counts.lock().unwrap();
        let n = counts.entry((path.clone(), id.clone())).or_default();
        *n += 1;
        *n
    };
    inner.arrivals.lock().unwrap().push(Arrival {
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        id: id.clone(),
        headers,
        body,
        verified,
        at: Instant::now(),
        attempt,
    });
    if !verified {
        return (StatusCode::BAD_REQUEST, "signature did not verify").into_response();
    }
    let policy = inner.policy.lock().unwrap().clone();
    match policy(&path, &id, attempt) {
        Answer::Status(status, headers) => {
            let mut response = StatusCode::from_u16(status).unwrap().into_response();
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_str(&value).unwrap());
            }
            response
        }
        Answer::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Answer::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}
