//! The admin read routes over the delivery log, against a running hookd
//! that does not dispatch: entries are recorded straight into the store the
//! server reads, so every field and page boundary is known.

mod support;

use std::sync::Arc;

use hookd::api::client::{ApiClient, Error as ClientError};
use hookd::config::{Config, Secret, SubscriptionName};
use hookd::history::embedded::EmbeddedHistory;
use hookd::history::redis::RedisHistory;
use hookd::history::{AttemptRecord, DeliveryState, DeliverySummary, Entry, ErrorKind, History, REDACTED};
use hookd::ingest::EventId;
use hookd::queue::embedded::EmbeddedQueue;
use hookd::queue::{shard_of, DeliveryId, Millis};
use http::StatusCode;
use serde_json::Value;
use support::{queue_config, test_config, unique_prefix, RedisServer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// 2026-01-01T00:00:00Z.
const T0: Millis = 1_767_225_600_000;
/// The API key the tests' hookd wants.
const KEY: &str = "k-admin-test-key";

/// A hookd serving on a port-0 listener, stopped on drop.
struct Running {
    /// Talks to it with the right key.
    client: ApiClient,
    /// Talks to it without a key.
    anonymous: ApiClient,
    /// Stops it.
    shutdown: CancellationToken,
    /// Its task.
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("hookd task").expect("hookd ran");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn config(queue: hookd::config::QueueConfig) -> Config {
    let mut config = test_config();
    config.queue = queue;
    config.server.api_keys = vec![Secret::new(KEY)];
    config.delivery.dispatch = false;
    config.ingest.stream = false;
    // The tests' fixed times must outlive the background trim.
    config.history.max_age = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    config
}

async fn serve(run: impl FnOnce(TcpListener, CancellationToken) -> JoinHandle<anyhow::Result<()>>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let task = run(listener, shutdown.clone());
    Running {
        client: ApiClient::new(&base, Some(KEY.into())),
        anonymous: ApiClient::new(&base, None),
        shutdown,
        task: Some(task),
    }
}

fn created(event: &str, subscription: &str, at: Millis, shards: u16) -> DeliverySummary {
    let event_id = EventId::parse(event).expect("event id");
    DeliverySummary {
        id: DeliveryId::new(shard_of(&event_id, shards)),
        event_id,
        event_type: "link.clicked".into(),
        subscription: SubscriptionName::parse(subscription).expect("name"),
        state: DeliveryState::Pending,
        attempts: 0,
        created_at: at,
        updated_at: at,
        last_status: None,
        last_error: None,
        next_attempt_at: None,
        note: None,
        tenant: None,
    }
}

fn attempt(d: &DeliverySummary, n: u32, at: Millis, status: u16) -> AttemptRecord {
    let failed = status >= 300;
    AttemptRecord {
        delivery_id: d.id.clone(),
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        subscription: d.subscription.clone(),
        attempt: n,
        started_at: at,
        duration_ms: 12,
        request_headers: vec![
            ("webhook-id".into(), d.event_id.to_string()),
            ("webhook-signature".into(), "v1,not-for-your-eyes".into()),
        ],
        status: Some(status),
        response_headers: vec![("content-type".into(), "text/plain".into())],
        response_body: if failed { "try later".into() } else { "ok".into() },
        error_kind: failed.then_some(ErrorKind::Status),
        error: failed.then(|| format!("status {status}")),
        next_attempt_at: failed.then_some(at + 5_000),
        tenant: d.tenant.clone(),
    }
}

/// Records one event fanned out to crm (failed once, then delivered) and
/// billing (retrying), and a later event to crm (pending). Returns the
/// three deliveries in that order.
async fn fill(history: &dyn History, shards: u16) -> [DeliverySummary; 3] {
    let crm = created("evt_admin_1", "crm", T0, shards);
    let billing = created("evt_admin_1", "billing", T0 + 1, shards);
    let later = created("evt_admin_2", "crm", T0 + 60_000, shards);
    history
        .record(&[
            Entry::Created(crm.clone()),
            Entry::Created(billing.clone()),
            Entry::Created(later.clone()),
            Entry::Attempted {
                attempt: attempt(&crm, 1, T0 + 10, 503),
                state: DeliveryState::Retrying,
            },
            Entry::Attempted {
                attempt: attempt(&crm, 2, T0 + 5_010, 200),
                state: DeliveryState::Delivered,
            },
            Entry::Attempted {
                attempt: attempt(&billing, 1, T0 + 11, 500),
                state: DeliveryState::Retrying,
            },
        ])
        .await
        .expect("record");
    [crm, billing, later]
}

fn listed(body: &Value) -> Vec<String> {
    body["deliveries"]
        .as_array()
        .expect("a deliveries array")
        .iter()
        .map(|d| d["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn bad_request(client: &ApiClient, path: &str) -> String {
    match client.get(path).await {
        Err(ClientError::Status { status, message }) if status == StatusCode::BAD_REQUEST => message,
        other => panic!("{path}: wanted a 400, got {other:?}"),
    }
}

/// Every route's answer for the deliveries [`fill`] recorded.
async fn check_routes(client: &ApiClient, [crm, billing, later]: &[DeliverySummary; 3]) {
    // Everything, newest first; then page by page.
    let all = client.get("/v1/deliveries").await.unwrap();
    assert_eq!(listed(&all), [&later.id, &billing.id, &crm.id].map(|id| id.to_string()));
    assert_eq!(all["next_cursor"], Value::Null);
    let first = client.get("/v1/deliveries?limit=2").await.unwrap();
    assert_eq!(listed(&first), [&later.id, &billing.id].map(|id| id.to_string()));
    let cursor = first["next_cursor"].as_str().expect("a cursor");
    let second = client
        .get(&format!("/v1/deliveries?limit=2&cursor={cursor}"))
        .await
        .unwrap();
    assert_eq!(listed(&second), [crm.id.to_string()]);
    assert_eq!(second["next_cursor"], Value::Null);

    // Filters.
    let retrying = client.get("/v1/deliveries?state=retrying").await.unwrap();
    assert_eq!(listed(&retrying), [billing.id.to_string()]);
    let crm_list = client.get("/v1/deliveries?subscription=crm").await.unwrap();
    assert_eq!(listed(&crm_list), [&later.id, &crm.id].map(|id| id.to_string()));
    let window = client
        .get("/v1/deliveries?from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:30%2B00:00")
        .await
        .unwrap();
    assert_eq!(listed(&window), [&billing.id, &crm.id].map(|id| id.to_string()));
    let summary = &crm_list["deliveries"][1];
    assert_eq!(summary["state"], "delivered");
    assert_eq!(summary["attempts"], 2);
    assert_eq!(summary["created_at"], "2026-01-01T00:00:00.000Z");
    assert_eq!(summary["last_status"], 200);

    // Bad values name their parameter.
    for (query, name) in [
        ("state=done", "`state`"),
        ("from=yesterday", "`from`"),
        ("to=2026-13-01T00:00:00Z", "`to`"),
        ("limit=0", "`limit`"),
        ("limit=5000", "`limit`"),
        ("subscription=a%20b", "`subscription`"),
        ("cursor=zz", "`cursor`"),
        ("colour=red", "`colour`"),
    ] {
        let message = bad_request(client, &format!("/v1/deliveries?{query}")).await;
        assert!(message.contains(name), "{query}: {message}");
    }

    // One delivery with its attempts.
    let detail = client
        .get(&format!("/v1/deliveries/{}/attempts", crm.id))
        .await
        .unwrap();
    assert_eq!(detail["delivery"]["id"], crm.id.as_str());
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(attempts[0]["error_kind"], "status");
    assert_eq!(attempts[0]["response_body"], "try later");
    assert_eq!(attempts[0]["started_at"], "2026-01-01T00:00:00.010Z");
    assert_eq!(attempts[0]["next_attempt_at"], "2026-01-01T00:00:05.010Z");
    assert_eq!(
        attempts[0]["request_headers"][1],
        serde_json::json!(["webhook-signature", REDACTED])
    );
    assert_eq!(attempts[1]["status"], 200);
    assert!(!detail.to_string().contains("not-for-your-eyes"));
    bad_request(client, "/v1/deliveries/nope/attempts").await;
    match client
        .get(&format!("/v1/deliveries/{}/attempts", DeliveryId::new(0)))
        .await
    {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, StatusCode::NOT_FOUND),
        other => panic!("wanted a 404, got {other:?}"),
    }

    // An event with its deliveries and their attempts.
    let event = client.get(&format!("/v1/events/{}", crm.event_id)).await.unwrap();
    assert_eq!(event["event_id"], crm.event_id.as_str());
    assert_eq!(listed(&event), [&crm.id, &billing.id].map(|id| id.to_string()));
    assert_eq!(event["deliveries"][0]["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(event["deliveries"][1]["attempts"][0]["status"], 500);
    match client.get("/v1/events/evt_unknown").await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, StatusCode::NOT_FOUND),
        other => panic!("wanted a 404, got {other:?}"),
    }
    bad_request(client, "/v1/events/bad%20id").await;

    // The queue's routes still answer beside these.
    let dead = client.get("/v1/deliveries/dead").await.unwrap();
    assert_eq!(dead["deliveries"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_read_the_embedded_history() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(queue_config(&unique_prefix("admin"), None, dir.path()));
    let queue = Arc::new(EmbeddedQueue::open(&config.queue).unwrap());
    let history: Arc<dyn History> = Arc::new(EmbeddedHistory::open(&config.queue, &config.history).unwrap());
    let recorded = fill(&*history, config.queue.shards).await;
    let running = serve(|listener, shutdown| {
        tokio::spawn(hookd::run_with_backends(
            config,
            hookd::queue::Backend::new(queue),
            history.clone(),
            listener,
            shutdown,
        ))
    })
    .await;

    check_routes(&running.client, &recorded).await;
    match running.anonymous.get("/v1/deliveries").await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("wanted a 401, got {other:?}"),
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_read_what_any_process_recorded_in_redis() {
    let server = RedisServer::start();
    let config = config(queue_config(&unique_prefix("admin"), Some(&server.url()), server.dir()));
    // hookd opens its own history; another "process" writes into Redis.
    let running = {
        let config = config.clone();
        serve(|listener, shutdown| tokio::spawn(hookd::run(config, listener, shutdown))).await
    };
    let writer = RedisHistory::connect(&config.queue, &config.history).await.unwrap();
    let recorded = fill(&writer, config.queue.shards).await;

    check_routes(&running.client, &recorded).await;
    match running
        .anonymous
        .get(&format!("/v1/events/{}", recorded[0].event_id))
        .await
    {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("wanted a 401, got {other:?}"),
    }
    running.stop().await;
}
