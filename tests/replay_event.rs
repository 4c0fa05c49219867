//! End to end: an event is kept in the delivery log as ingested and
//! replayed to its subscriptions through `POST /v1/events/{id}/replay`,
//! on a real Redis and on the embedded store, to a real verifying receiver.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hookd::config::Config;
use hookd::history::{Entry, EventRecord, History};
use hookd::ingest::EventId;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::receiver::{Arrival, Receiver, SECRET};
use support::{unique_prefix, RedisServer};

use support::daemon::WAIT;

/// hookd running in this process, with the history it writes.
struct Hookd(support::daemon::Hookd);

impl std::ops::Deref for Hookd {
    type Target = support::daemon::Hookd;

    fn deref(&self) -> &support::daemon::Hookd {
        &self.0
    }
}

impl Hookd {
    async fn start(config: Config, history: Arc<dyn History>) -> Hookd {
        Hookd(support::daemon::Hookd::start_with_history(config, history).await)
    }

    async fn stop(self) {
        self.0.stop().await;
    }

    /// POSTs `body` to `path`; the status and the JSON answer, whatever
    /// the status.
    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.api.base()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = client.request(request).await.expect("hookd answers");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }

    /// Replays `event` with `body`, expecting `status`.
    async fn replay(&self, event: &str, body: Value, status: StatusCode) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (got, answer) = self.post(&format!("/v1/events/{event}/replay"), &body).await;
        assert_eq!(got, status, "replay of {event} with {body}: {answer:#}");
        answer
    }
}

/// The config of both tests: `crm` and `billing` both want `coupon.*`,
/// `links` wants `link.*`; all deliver to `rx`.
fn config(queue: &str, rx: &Receiver) -> Config {
    let subscription = |name: &str, events: &str| {
        format!(
            "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"{}\"\nevents = [\"{events}\"]\nsecrets = [\"{SECRET}\"]\n",
            rx.url(name)
        )
    };
    let toml = format!(
        "[queue]\n{queue}\npoll_interval = \"20ms\"\n[delivery]\nallow_http = true\nallow_private_networks = true\n\
         [history]\nmax_age = \"1h\"\n{}{}{}",
        subscription("crm", "coupon.*"),
        subscription("billing", "coupon.*"),
        subscription("links", "link.*"),
    );
    Config::from_toml(&toml).expect("valid test config")
}

/// The subscriptions of the `deliveries` of a replay answer, sorted.
fn subscriptions_of(answer: &Value) -> Vec<String> {
    let mut names: Vec<String> = answer["deliveries"]
        .as_array()
        .expect("a deliveries array")
        .iter()
        .map(|d| {
            assert!(d["id"].as_str().is_some_and(|id| id.starts_with("dlv_")), "{d}");
            d["subscription"].as_str().expect("a subscription").to_owned()
        })
        .collect();
    names.sort();
    names
}

/// Waits until `path` has received `n` requests in all.
async fn arrivals_at(rx: &Receiver, path: &str, n: usize) -> Vec<Arrival> {
    rx.wait_for(WAIT, &format!("{n} arrivals at {path}"), |a| {
        a.iter().filter(|a| a.path == path).count() >= n
    })
    .await;
    rx.at(path)
}

/// The whole story, on whichever backend `config` and `history` use.
async fn replays(config: Config, history: Arc<dyn History>, rx: &Receiver) {
    let hookd = Hookd::start(config, history.clone()).await;
    let event = json!({"type": "coupon.redeemed", "id": "evt_replay_1", "data": {"coupon": "SPRING", "amount": 25}});
    let (status, accepted) = hookd.post("/v1/events", &event.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["deliveries"], 2);
    let crm = arrivals_at(rx, "crm", 1).await;
    let billing = arrivals_at(rx, "billing", 1).await;
    let original = crm[0].body.clone();
    assert_eq!(billing[0].body, original, "one body for every subscription");

    // The log keeps the event as ingested, and both deliveries.
    let logged = hookd
        .wait_for("/v1/events/evt_replay_1", "the event and its two deliveries", |v| {
            !v["event"].is_null() && v["deliveries"].as_array().is_some_and(|d| d.len() == 2)
        })
        .await;
    assert_eq!(logged["event"]["id"], "evt_replay_1");
    assert_eq!(logged["event"]["type"], "coupon.redeemed");
    assert_eq!(logged["event"]["data"], crm[0].json(), "the body as JSON");
    assert!(logged["event"]["created_at"].as_str().is_some());
    let record = history
        .event_record(None, &EventId::parse("evt_replay_1").unwrap())
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(record.body, original, "stored byte for byte");

    // Replay to every subscription it was delivered to: same id, same
    // bytes, signed again.
    let answer = hookd.replay("evt_replay_1", Value::Null, StatusCode::ACCEPTED).await;
    assert_eq!(answer["event_id"], "evt_replay_1");
    assert_eq!(answer["duplicate"], false);
    assert_eq!(subscriptions_of(&answer), ["billing", "crm"]);
    for path in ["crm", "billing"] {
        let got = arrivals_at(rx, path, 2).await;
        let again = &got[1];
        assert_eq!(again.id, "evt_replay_1", "the same webhook-id");
        assert_eq!(again.body, original, "the same bytes");
        assert!(again.verified, "a valid signature");
        assert_eq!(again.attempt, 2, "the receiver sees the same id again");
    }
    // The log shows the replayed deliveries with their note.
    let logged = hookd
        .wait_for("/v1/events/evt_replay_1", "four deliveries", |v| {
            v["deliveries"].as_array().is_some_and(|d| d.len() == 4)
        })
        .await;
    let notes: Vec<&Value> = logged["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["note"])
        .collect();
    assert_eq!(
        notes.iter().filter(|n| **n == "replay of event evt_replay_1").count(),
        2,
        "{notes:?}"
    );

    // The same key twice delivers once.
    let keyed = json!({"key": "restore-1"});
    let first = hookd.replay("evt_replay_1", keyed.clone(), StatusCode::ACCEPTED).await;
    assert_eq!(subscriptions_of(&first), ["billing", "crm"]);
    let second = hookd.replay("evt_replay_1", keyed, StatusCode::OK).await;
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["deliveries"], json!([]));
    arrivals_at(rx, "crm", 3).await;
    arrivals_at(rx, "billing", 3).await;

    // Only the subscription named.
    let only = hookd
        .replay(
            "evt_replay_1",
            json!({"subscriptions": ["billing"], "key": "billing-only"}),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(subscriptions_of(&only), ["billing"]);
    let billing = arrivals_at(rx, "billing", 4).await;
    assert!(billing
        .iter()
        .all(|a| a.verified && a.body == original && a.id == "evt_replay_1"));
    // Named, a subscription gets it even if it never had it.
    let links = hookd
        .replay(
            "evt_replay_1",
            json!({"subscriptions": ["links"], "key": "links"}),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(subscriptions_of(&links), ["links"]);
    arrivals_at(rx, "links", 1).await;

    // Nothing more arrives: the duplicate enqueued nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (rx.at("crm").len(), rx.at("billing").len(), rx.at("links").len()),
        (3, 4, 1)
    );

    // What cannot be replayed says why.
    let unknown = hookd.replay("evt_never_seen", Value::Null, StatusCode::NOT_FOUND).await;
    let message = unknown["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("trimmed by history retention, or never recorded"),
        "{message}"
    );
    assert_eq!(unknown["error"]["code"], "not_found");
    let typo = hookd
        .replay(
            "evt_replay_1",
            json!({"subscriptions": ["crm", "bililng"]}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    let message = typo["error"]["message"].as_str().unwrap();
    assert!(message.contains("`bililng`"), "{message}");
    hookd
        .replay(
            "evt_replay_1",
            json!({"subscription": ["crm"]}),
            StatusCode::BAD_REQUEST,
        )
        .await;
    hookd.replay("bad%20id", Value::Null, StatusCode::BAD_REQUEST).await;

    // An event the log keeps without a delivery to any subscription.
    history
        .record(&[Entry::Event(EventRecord {
            id: EventId::parse("evt_replay_orphan").unwrap(),
            event_type: "coupon.redeemed".into(),
            created_at: hookd::queue::now_ms(),
            body: Bytes::from_static(b"not json \xff"),
            tenant: None,
        })])
        .await
        .unwrap();
    let orphan = hookd
        .replay("evt_replay_orphan", Value::Null, StatusCode::CONFLICT)
        .await;
    let message = orphan["error"]["message"].as_str().unwrap();
    assert!(message.contains("`subscriptions`"), "{message}");
    let shown = hookd.api.get("/v1/events/evt_replay_orphan").await.unwrap();
    assert_eq!(
        shown["event"]["body"], "not json \u{fffd}",
        "a body that is not JSON, as text"
    );
    assert_eq!(shown["event"]["data"], Value::Null);
    assert_eq!(shown["deliveries"], json!([]));
    hookd
        .replay(
            "evt_replay_orphan",
            json!({"subscriptions": ["crm"]}),
            StatusCode::ACCEPTED,
        )
        .await;
    let crm = arrivals_at(rx, "crm", 4).await;
    assert_eq!(&crm[3].body[..], b"not json \xff");
    assert!(crm[3].verified);

    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_on_redis() {
    let server = RedisServer::start();
    let rx = Receiver::start().await;
    let queue = format!(
        "redis_url = \"{}\"\nkey_prefix = \"{}\"",
        server.url(),
        unique_prefix("replay")
    );
    let config = config(&queue, &rx);
    let history = hookd::open_history(&config).await.expect("open the history");
    replays(config, history, &rx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let config = config(&format!("data_dir = {:?}", dir.path().display().to_string()), &rx);
    let history = hookd::open_history(&config).await.expect("open the history");
    replays(config, history, &rx).await;
}
