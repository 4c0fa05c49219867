//! A webhook receiver to copy: verifies hookd's Standard Webhooks
//! signatures, drops duplicates, and prints one line per webhook.
//!
//! ```text
//! cargo run --example receiver -- --listen 127.0.0.1:9000 --secret whsec_...
//! ```
//!
//! `--secret` is the subscription's `whsec_` secret (`v1` signatures) or,
//! for an Ed25519 subscription, its `whpk_` public key (`v1a`). Give it
//! twice while rotating keys, of either kind: a webhook signed by either is
//! accepted. Answers:
//!
//! - `204 No Content`: verified and processed;
//! - `200 OK` with `duplicate`: verified, but its `webhook-id` was already
//!   processed, so it is not processed again. A duplicate means hookd never
//!   saw the first answer (a timeout, a dropped connection), so it is
//!   acknowledged with a 2xx: a 4xx would make hookd retry it until dead;
//! - `400 Bad Request` with the reason: not verified (bad or missing
//!   signature, stale timestamp, altered body). Not processed.
//!
//! Each line printed reads: time, webhook id, event type, result.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use hookd::sign::{Verifier, HEADER_WEBHOOK_ID};

/// Largest webhook body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// Receive and verify webhooks from hookd.
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The subscription's signing secret (`whsec_…`) or Ed25519 public key
    /// (`whpk_…`); repeat while rotating.
    #[arg(long = "secret", required = true, env = "WEBHOOK_SECRET")]
    secrets: Vec<String>,
    /// Largest accepted distance between `webhook-timestamp` and now, in seconds.
    #[arg(long, default_value_t = 300)]
    tolerance: u64,
}

/// What every connection shares.
struct State {
    /// Checks signatures, timestamps and digests.
    verifier: Verifier,
    /// `webhook-id`s already processed. In memory and unbounded here; a real
    /// receiver keeps them in its database, in the same transaction as the
    /// work the webhook triggers, for as long as hookd may retry (days).
    seen: Mutex<HashSet<String>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let verifier = Verifier::new(&args.secrets)
        .context("bad --secret")?
        .with_tolerance(Duration::from_secs(args.tolerance));
    let state = Arc::new(State {
        verifier,
        seen: Mutex::new(HashSet::new()),
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("receiving webhooks on http://{}", listener.local_addr()?);

    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            if let Err(error) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {error}");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "send webhooks with POST"));
    }
    let (head, body) = req.into_parts();
    let id = head
        .headers
        .get(HEADER_WEBHOOK_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            log(&id, "-", &format!("rejected: cannot read body: {error}"));
            return Ok(reply(StatusCode::BAD_REQUEST, &format!("cannot read body: {error}")));
        }
    };
    let event_type = event_type(&body);

    if let Err(error) = state.verifier.verify(&head.headers, &body) {
        log(&id, &event_type, &format!("rejected: {error}"));
        return Ok(reply(StatusCode::BAD_REQUEST, &error.to_string()));
    }
    let first_time = match state.seen.lock() {
        Ok(mut seen) => seen.insert(id.clone()),
        Err(poisoned) => poisoned.into_inner().insert(id.clone()),
    };
    if !first_time {
        log(&id, &event_type, "verified, duplicate: not processed again");
        return Ok(reply(StatusCode::OK, "duplicate: already processed"));
    }

    // Process the event here.
    log(&id, &event_type, "verified");
    Ok(reply(StatusCode::NO_CONTENT, ""))
}

/// The `type` of a hookd event body, or `-` if it has none.
fn event_type(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "-".to_string())
}

fn log(id: &str, event_type: &str, result: &str) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    println!("{now} {id} {event_type} {result}");
}

fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    if !text.is_empty() {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    }
    response
}
