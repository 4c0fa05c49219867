//! How fast the console's pages are on a big delivery log: fills the
//! embedded log with `--deliveries N` (1,000,000 by default) delivered
//! deliveries spread over the last 23 hours and 20 subscriptions, starts
//! hookd on it, signs in as the operator and times each page over
//! `--repeat` requests (release build recommended):
//!
//! ```text
//! cargo run --release --example console_speed -- --deliveries 1000000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookd::config::{Config, SubscriptionName};
use hookd::history::embedded::EmbeddedHistory;
use hookd::history::{AttemptRecord, DeliveryState, Entry, History, REDACTED};
use hookd::ingest::EventId;
use hookd::queue::{now_ms, shard_of, DeliveryId};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

const ADMIN: &str = "speed-admin-key-1";
const SUBSCRIPTIONS: usize = 20;
const BATCH: usize = 1024;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// One delivered delivery of `subscription`, attempted at `at`.
fn delivered(subscription: &SubscriptionName, at: i64, n: usize) -> Entry {
    let event_id = EventId::generate();
    let header = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let ok = !n.is_multiple_of(50);
    Entry::Attempted {
        attempt: AttemptRecord {
            delivery_id: DeliveryId::new(shard_of(&event_id, 16)),
            event_id: event_id.clone(),
            event_type: "coupon.redeemed".into(),
            subscription: subscription.clone(),
            attempt: 1,
            started_at: at,
            duration_ms: 5 + (n % 40) as u64,
            request_headers: vec![
                header("webhook-id", event_id.as_str()),
                header("webhook-signature", REDACTED),
                header("content-type", "application/json"),
            ],
            status: Some(if ok { 200 } else { 500 }),
            response_headers: vec![header("content-type", "application/json")],
            response_body: r#"{"ok":true}"#.into(),
            error_kind: None,
            error: None,
            next_attempt_at: None,
            tenant: None,
        },
        state: if ok {
            DeliveryState::Delivered
        } else {
            DeliveryState::Dead
        },
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn fetch(
    client: &Http,
    method: Method,
    url: &str,
    cookie: &str,
    form: Option<&str>,
    origin: &str,
) -> (u16, String, Option<String>) {
    let mut req = Request::builder().method(method).uri(url).header("origin", origin);
    if !cookie.is_empty() {
        req = req.header("cookie", cookie);
    }
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let body = Full::new(Bytes::from(form.unwrap_or("").to_owned()));
    let response = client.request(req.body(body).unwrap()).await.expect("hookd answers");
    let status = response.status().as_u16();
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), set_cookie)
}

/// The first `href` after `marker` in `html`.
fn link_after(html: &str, marker: &str) -> Option<String> {
    let rest = &html[html.find(marker)?..];
    let href = rest.split("href=\"").nth(1)?.split('"').next()?;
    Some(href.replace("&amp;", "&"))
}

/// The "Older →" link of a log page.
fn older_link(html: &str) -> Option<String> {
    let at = html.rfind("href=\"/console/deliveries?")?;
    Some(html[at + 6..].split('"').next()?.replace("&amp;", "&"))
}

#[tokio::main]
async fn main() {
    let deliveries = arg("--deliveries", 1_000_000);
    let repeat = arg("--repeat", 20);
    let dir = tempfile::tempdir().unwrap();
    let mut toml = format!(
        "[server]\napi_keys = [\"{ADMIN}\"]\n[queue]\ndata_dir = {:?}\n[history]\nmax_count = {}\n",
        dir.path().display().to_string(),
        deliveries.max(1_000_000)
    );
    for s in 0..SUBSCRIPTIONS {
        toml.push_str(&format!(
            "\n[[subscriptions]]\nname = \"sub-{s:02}\"\nurl = \"https://example.invalid/{s}\"\nevents = [\"coupon.*\"]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n"
        ));
    }
    let config = Config::from_toml(&toml).unwrap();

    // Fill the log as the dispatcher would, a batch at a time.
    let started = Instant::now();
    {
        let history: Arc<dyn History> = Arc::new(EmbeddedHistory::open(&config.queue, &config.history).unwrap());
        let names: Vec<SubscriptionName> = (0..SUBSCRIPTIONS)
            .map(|s| SubscriptionName::parse(&format!("sub-{s:02}")).unwrap())
            .collect();
        let span = 23 * 3_600_000i64;
        let from = now_ms() - span;
        let mut n = 0;
        while n < deliveries {
            let batch: Vec<Entry> = (n..(n + BATCH).min(deliveries))
                .map(|i| delivered(&names[i % SUBSCRIPTIONS], from + span * i as i64 / deliveries as i64, i))
                .collect();
            history.record(&batch).await.unwrap();
            n += batch.len();
        }
    }
    println!(
        "filled the embedded log with {deliveries} deliveries over {SUBSCRIPTIONS} subscriptions in {:.1?}",
        started.elapsed()
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let hookd = tokio::spawn(hookd::run(config, listener, shutdown.clone()));
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, cookie) = fetch(
        &client,
        Method::POST,
        &format!("{base}/console/sign-in"),
        "",
        Some(&format!("key={ADMIN}")),
        &base,
    )
    .await;
    assert_eq!(status, 303, "signed in");
    let cookie = cookie.expect("a session cookie");

    // Pages reached by links: a delivery, an event, page 20 of the log.
    let (_, first, _) = fetch(
        &client,
        Method::GET,
        &format!("{base}/console/deliveries"),
        &cookie,
        None,
        &base,
    )
    .await;
    let delivery = link_after(&first, "<tbody>").expect("a delivery row");
    let event = link_after(&first[first.find(&delivery).unwrap()..], "</a>").expect("an event link");
    let mut page = first.clone();
    for _ in 0..19 {
        let older = older_link(&page).unwrap_or_else(|| panic!("no older page in {page}"));
        page = fetch(&client, Method::GET, &format!("{base}{older}"), &cookie, None, &base)
            .await
            .1;
    }
    let page_21 = older_link(&page).expect("page 21");

    let pages = [
        ("overview, last hour", "/console".to_owned()),
        ("overview, last day", "/console?window=day".to_owned()),
        ("subscriptions (20)", "/console/subscriptions".to_owned()),
        ("deliveries, newest 50", "/console/deliveries".to_owned()),
        (
            "deliveries of one subscription",
            "/console/deliveries?subscription=sub-07".to_owned(),
        ),
        ("deliveries, dead only", "/console/deliveries?state=dead".to_owned()),
        ("deliveries, page 21", page_21),
        ("one delivery", delivery),
        ("one event", event),
    ];
    println!("\n{:<32} {:>8} {:>8} {:>8}", "page", "p50 ms", "max ms", "bytes");
    for (name, path) in pages {
        let mut times = Vec::with_capacity(repeat);
        let mut bytes = 0;
        for _ in 0..repeat {
            let t = Instant::now();
            let (status, body, _) = fetch(&client, Method::GET, &format!("{base}{path}"), &cookie, None, &base).await;
            times.push(t.elapsed());
            assert_eq!(status, 200, "{path}: {body}");
            bytes = body.len();
        }
        times.sort();
        println!(
            "{name:<32} {:>8.1} {:>8.1} {bytes:>8}",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
    shutdown.cancel();
    let _ = hookd.await;
}
