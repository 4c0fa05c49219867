//! `hookd demo`: hookd and a verifying receiver in one process.
//!
//! Starts hookd on the embedded store (a fresh temporary directory), a
//! receiver on loopback that checks every request's Standard Webhooks
//! signature and digest with [`crate::sign::Verifier`], sends sample link,
//! coupon, stamp and chat events through the real HTTP API, and prints each
//! webhook as it arrives. One endpoint answers its first attempt with 503 to
//! show a retry; one event is sent twice to show deduplication.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::client::ApiClient;
use crate::config::Config;
use crate::sign::{Verifier, HEADER_WEBHOOK_ID};

/// The event whose first attempt the receiver refuses, to show a retry.
const FLAKY_EVENT: &str = "evt_demo_coupon_welcome";

/// The receiver's state.
struct Receiver {
    /// One verifier per subscription path.
    verifiers: HashMap<String, Verifier>,
    /// Attempts seen per (subscription path, webhook-id).
    attempts: Mutex<HashMap<(String, String), u32>>,
    /// Verified deliveries acknowledged with 2xx.
    delivered: AtomicUsize,
    /// Requests whose signature did not verify.
    rejected: AtomicUsize,
}

fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(verifier) = receiver.verifiers.get(&name) else {
        return StatusCode::NOT_FOUND;
    };
    let id = headers
        .get(HEADER_WEBHOOK_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    if let Err(e) = verifier.verify(&headers, &body) {
        receiver.rejected.fetch_add(1, Ordering::Relaxed);
        println!("  ✗ {name:<12} {id}  REJECTED: {e}");
        return StatusCode::BAD_REQUEST;
    }
    let attempt = {
        let mut attempts = receiver.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let n = attempts.entry((name.clone(), id.clone())).or_default();
        *n += 1;
        *n
    };
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let event_type = parsed["type"].as_str().unwrap_or("?");
    if id == FLAKY_EVENT && attempt == 1 && name == "crm" {
        println!("  … {name:<12} {event_type:<22} {id}  signature ok, answering 503 to show a retry");
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    receiver.delivered.fetch_add(1, Ordering::Relaxed);
    println!(
        "  ✓ {name:<12} {event_type:<22} {id}  attempt {attempt}, signature and digest verified  {}",
        parsed["data"]
    );
    StatusCode::NO_CONTENT
}

/// Runs the demo; with `keep`, stays up until Ctrl-C.
pub async fn run(keep: bool) -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("hookd-demo-{}", uuid::Uuid::now_v7().simple()));
    let receiver_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the demo receiver")?;
    let receiver_addr = receiver_listener.local_addr()?;
    let hookd_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind hookd's API")?;
    let hookd_addr = hookd_listener.local_addr()?;

    let subscriptions = [
        ("crm", "[\"coupon.*\", \"stamp.rewarded\"]"),
        ("analytics", "[\"link.clicked\", \"coupon.redeemed\"]"),
        ("chat-bot", "[\"message.*\", \"conversation.updated\"]"),
    ];
    let mut toml = format!(
        "[queue]\ndata_dir = {dir:?}\n\n[console]\nlink_ttl = \"1h\"\n\n[delivery]\nallow_http = true\nallow_private_networks = true\nbackoff_initial = \"1s\"\n",
        dir = data_dir.display().to_string()
    );
    let mut verifiers = HashMap::new();
    for (name, events) in subscriptions {
        let secret = new_secret();
        verifiers.insert(name.to_owned(), Verifier::new(&[secret.as_str()])?);
        toml.push_str(&format!(
            "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"http://{receiver_addr}/{name}\"\nevents = {events}\nsecrets = [\"{secret}\"]\nheaders = {{ \"x-demo\" = \"hookd\" }}\n"
        ));
    }
    let config = Config::from_toml(&toml)?;

    let receiver = Arc::new(Receiver {
        verifiers,
        attempts: Mutex::new(HashMap::new()),
        delivered: AtomicUsize::new(0),
        rejected: AtomicUsize::new(0),
    });
    let shutdown = CancellationToken::new();
    let app = Router::new()
        .route("/{name}", post(receive))
        .with_state(receiver.clone());
    let receiver_stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(receiver_listener, app)
            .with_graceful_shutdown(receiver_stop.cancelled_owned())
            .await;
    });
    let hookd = tokio::spawn(crate::run(config, hookd_listener, shutdown.clone()));

    println!("hookd demo");
    println!(
        "  hookd API   http://{hookd_addr}  (embedded store in {})",
        data_dir.display()
    );
    println!("  receiver    http://{receiver_addr}/{{crm,analytics,chat-bot}}  verifying every signature");
    let api = ApiClient::new(&format!("http://{hookd_addr}"), None);
    let link = api.post("/v1/console/link", "").await?;
    println!(
        "  console     {}  (opens once, within the hour, signed in as the operator)\n",
        link["url"].as_str().unwrap_or("?")
    );

    let samples = [
        (
            "evt_demo_link_1",
            "link.clicked",
            r#"{"link":"https://go.example.com/spring","campaign":"spring-sale","country":"NL"}"#,
        ),
        (
            "evt_demo_coupon_spring",
            "coupon.redeemed",
            r#"{"coupon":"SPRING10","amount":25.0,"customer":"cus_42"}"#,
        ),
        (
            FLAKY_EVENT,
            "coupon.redeemed",
            r#"{"coupon":"WELCOME5","amount":5.0,"customer":"cus_7"}"#,
        ),
        (
            "evt_demo_stamp_1",
            "stamp.rewarded",
            r#"{"card":"card_88","stamps":10,"reward":"free coffee"}"#,
        ),
        (
            "evt_demo_msg_1",
            "message.created",
            r#"{"conversation":"conv_3","author":"ana","text":"hi there"}"#,
        ),
        (
            "evt_demo_conv_1",
            "conversation.updated",
            r#"{"conversation":"conv_3","status":"resolved"}"#,
        ),
        (
            "evt_demo_coupon_spring",
            "coupon.redeemed",
            r#"{"coupon":"SPRING10","amount":25.0,"customer":"cus_42"}"#,
        ),
    ];
    let mut expected = 0;
    println!(
        "sending {} events to POST /v1/events (→), webhooks arriving at the receiver (✓):",
        samples.len()
    );
    for (id, event_type, data) in samples {
        let event = format!(r#"{{"id":"{id}","type":"{event_type}","data":{data}}}"#);
        let answer = api.post("/v1/events", event).await?;
        let deliveries = answer["deliveries"].as_u64().unwrap_or(0) as usize;
        expected += deliveries;
        let note = if answer["duplicate"] == true {
            "duplicate: not delivered again"
        } else {
            "accepted"
        };
        println!("  → {event_type:<22} {id:<26} {note}, {deliveries} deliveries");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.delivered.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = receiver.delivered.load(Ordering::Relaxed);
    println!(
        "\n{delivered} of {expected} deliveries arrived, signatures verified ({} rejected).",
        receiver.rejected.load(Ordering::Relaxed)
    );
    if keep {
        println!(
            "hookd keeps running, sending a link click every 5 s (watch them in the console): try\n  cargo run -- send --server http://{hookd_addr} --type coupon.redeemed --data '{{\"coupon\":\"X\",\"amount\":3}}'\nCtrl-C to stop."
        );
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        for n in 1.. {
            tokio::select! {
                _ = &mut ctrl_c => break,
                _ = tick.tick() => {
                    let event = format!(r#"{{"type":"link.clicked","data":{{"link":"https://go.example.com/spring","click":{n}}}}}"#);
                    if let Err(e) = api.post("/v1/events", event).await {
                        println!("  ✗ could not send a link click: {e}");
                    }
                }
            }
        }
    }
    shutdown.cancel();
    hookd.await.context("hookd task failed")??;
    let _ = std::fs::remove_dir_all(&data_dir);
    if delivered < expected {
        bail!("only {delivered} of {expected} deliveries arrived within 20s");
    }
    Ok(())
}
