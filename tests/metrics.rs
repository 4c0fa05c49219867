//! `GET /metrics` of a running hookd (embedded store, port-0 listener):
//! what it counts, and who may read it; and the JSON log format of the
//! `hookd` binary.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hookd::api::client::ApiClient;
use hookd::config::Config;
use serde_json::json;
use support::receiver::SECRET;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A raw HTTP/1.1 exchange: status, headers (lower-case names) and body.
async fn http(addr: &str, request: String) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.expect("hookd accepts connections");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("hookd answers within 10s")
        .unwrap();
    let answer = String::from_utf8(answer).expect("a UTF-8 answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The value of the sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_ingested_events_by_source_and_type_and_dedup_hits() {
    let dir = tempfile::tempdir().unwrap();
    // No dispatcher: the subscription's endpoint need not exist.
    let text = format!(
        "[server]\napi_keys = [\"test-key-00000001\"]\n[queue]\ndata_dir = {:?}\n[delivery]\ndispatch = false\n\
         [[subscriptions]]\nname = \"crm\"\nurl = \"https://crm.example.com/hooks\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\n",
        dir.path().display().to_string()
    );
    let config = Config::from_toml(&text).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hookd::run(config, listener, shutdown.clone()));
    let api = ApiClient::new(&format!("http://{addr}"), Some("test-key-00000001".into()));

    for (id, event_type) in [
        ("e1", "coupon.redeemed"),
        ("e2", "coupon.redeemed"),
        ("e3", "link.clicked"),
    ] {
        let answer = api
            .post(
                "/v1/events",
                json!({"type": event_type, "id": id, "data": {}}).to_string(),
            )
            .await
            .unwrap();
        assert_eq!(answer["duplicate"], false, "{answer}");
    }
    // The same id again: acknowledged as a duplicate.
    let again = api
        .post(
            "/v1/events",
            json!({"type": "coupon.redeemed", "id": "e1", "data": {}}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(again["duplicate"], true, "{again}");
    // A batch, and one event sent as `hookd send` does.
    api.post(
        "/v1/events/batch",
        json!([{"type": "link.clicked", "data": {}}, {"type": "stamp.rewarded", "data": {}}]).to_string(),
    )
    .await
    .unwrap();
    let body = json!({"type": "link.clicked", "data": {}}).to_string();
    let (status, _, answer) = http(
        &addr,
        format!(
            "POST /v1/events HTTP/1.1\r\nhost: x\r\nuser-agent: hookd-cli/1.0\r\nauthorization: Bearer test-key-00000001\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(status, 202, "{answer}");

    // With keys set, /metrics needs an admin key.
    let (status, headers, text) = http(
        &addr,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer test-key-00000001\r\nconnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        content_type,
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let cases: &[(&str, f64)] = &[
        (
            r#"hookd_events_ingested_total{source="http",type="coupon.redeemed"}"#,
            2.0,
        ),
        (r#"hookd_events_ingested_total{source="http",type="link.clicked"}"#, 2.0),
        (
            r#"hookd_events_ingested_total{source="http",type="stamp.rewarded"}"#,
            1.0,
        ),
        (r#"hookd_events_ingested_total{source="cli",type="link.clicked"}"#, 1.0),
        ("hookd_dedup_hits_total", 1.0),
    ];
    for (series, want) in cases {
        assert_eq!(sample(&text, series), Some(*want), "{series} in\n{text}");
    }
    // Families without series yet (deliveries: no dispatcher here) are not
    // rendered; notification counters start at zero.
    assert_eq!(
        sample(&text, r#"hookd_notifications_total{kind="dead",result="sent"}"#),
        Some(0.0),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A hookd on the embedded store with `server` as its `[server]` keys.
async fn start(
    dir: &std::path::Path,
    server: &str,
) -> (String, CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let text = format!(
        "[server]\n{server}\n[queue]\ndata_dir = {:?}\n[delivery]\ndispatch = false\n",
        dir.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hookd::run(config, listener, shutdown.clone()));
    (addr, shutdown, task)
}

/// `GET /metrics` with `key` as the bearer, if any: the status and the
/// error code (or the body, on a 200).
async fn read_metrics(addr: &str, key: Option<&str>) -> (u16, String) {
    let auth = key
        .map(|k| format!("authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let (status, _, body) = http(
        addr,
        format!("GET /metrics HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n"),
    )
    .await;
    if status == 200 {
        assert!(body.trim_end().ends_with("# EOF"), "the metrics: {body}");
        return (status, body);
    }
    let error: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, error["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_admin_key_while_api_keys_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, shutdown, task) = start(&dir.path().join("keyed"), "api_keys = [\"test-key-00000001\"]").await;
    let admin = ApiClient::new(&format!("http://{addr}"), Some("test-key-00000001".into()));
    admin
        .post("/v1/tenants", json!({"id": "acme", "name": "Acme"}).to_string())
        .await
        .unwrap();
    let key = |answer: serde_json::Value| answer["key"].as_str().unwrap().to_owned();
    let tenant = key(admin.post("/v1/tenants/acme/keys", "{}").await.unwrap());
    let producer = key(admin
        .post("/v1/tenants/acme/keys", json!({"role": "producer"}).to_string())
        .await
        .unwrap());
    let stored_admin = key(admin
        .post("/v1/keys", json!({"role": "admin"}).to_string())
        .await
        .unwrap());
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("no key", None, 401, "unauthorized"),
        ("a wrong key", Some("nope"), 401, "unauthorized"),
        ("a tenant key", Some(&tenant), 403, "forbidden"),
        ("a producer key", Some(&producer), 403, "forbidden"),
    ];
    for (who, given, status, code) in cases {
        assert_eq!(
            read_metrics(&addr, *given).await,
            (*status, (*code).to_owned()),
            "{who}"
        );
    }
    assert_eq!(
        read_metrics(&addr, Some("test-key-00000001")).await.0,
        200,
        "a key of server.api_keys"
    );
    assert_eq!(
        read_metrics(&addr, Some(&stored_admin)).await.0,
        200,
        "an admin key made through the API"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();

    // Opened on purpose; an open API (the loopback demo); the deprecated
    // metrics_require_key still asks for a key there.
    for (name, server, without_key) in [
        (
            "public",
            "api_keys = [\"test-key-00000001\"]\nmetrics_public = true",
            200,
        ),
        ("open", "", 200),
        ("require", "metrics_require_key = true", 401),
    ] {
        let (addr, shutdown, task) = start(&dir.path().join(name), server).await;
        assert_eq!(read_metrics(&addr, None).await.0, without_key, "{name}");
        assert_eq!(read_metrics(&addr, Some("test-key-00000001")).await.0, 200, "{name}");
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }
}

#[test]
fn json_logs_are_one_flat_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[queue]\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("HOOKD_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hookd binary starts");
    let stderr = child.stderr.take().unwrap();
    let mut serving = None;
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let object: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        seen.push(line);
        if object["message"] == "hookd serving" {
            serving = Some(object);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let serving = serving.unwrap_or_else(|| panic!("no `hookd serving` line in:\n{}", seen.join("\n")));
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert!(serving["timestamp"].is_string(), "{serving}");
    // Fields sit beside the message, not nested under "fields".
    assert!(serving.get("fields").is_none(), "{serving}");
    assert_eq!(serving["backend"], "embedded", "{serving}");
    assert!(
        serving["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{serving}"
    );
}
