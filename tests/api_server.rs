//! The API listener under hostile clients, over raw TCP: a slow head is
//! cut at `server.header_read_timeout`, a trickling body answered 408 at
//! `server.request_timeout`, connections beyond `server.max_connections`
//! wait, and shutdown ends within `server.shutdown_timeout` whatever the
//! clients do. Also: an open API beyond loopback refused at start, the
//! bearer scheme in any case, cross-site posts refused, `/metrics` behind
//! a key when asked; an API without keys answering only for loopback
//! hosts and `server.allowed_hosts` (no DNS rebinding), over HTTP/1.1 and
//! HTTP/2; the console and its links over HTTP/2, where browsers send
//! `:authority` and no `Host`; `/readyz` keeping the queue's error for an
//! admin key.

mod support;

use std::time::{Duration, Instant};

use hookd::config::Config;
use serde_json::json;
use support::daemon::Hookd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "server-admin-key";

fn config(dir: &std::path::Path, server: &str) -> Config {
    Config::from_toml(&format!(
        "[server]\napi_keys = [\"{ADMIN}\"]\n{server}\n[queue]\ndata_dir = {:?}\n",
        dir.display().to_string()
    ))
    .unwrap()
}

/// A configuration without `server.api_keys` (an open API, for loopback).
fn open_config(dir: &std::path::Path, server: &str) -> Config {
    Config::from_toml(&format!(
        "[server]\n{server}\n[queue]\ndata_dir = {:?}\n",
        dir.display().to_string()
    ))
    .unwrap()
}

fn addr(hookd: &Hookd) -> String {
    hookd.url.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes or `limit` passes; returns what came and
/// whether it closed.
async fn read_all(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// One request over a fresh HTTP/1.1 connection, `head` being its lines
/// after the request line (`host: …` and the rest, each ending in CRLF);
/// the status and the body.
async fn exchange(addr: &str, method: &str, path: &str, head: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\n{head}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (answer, closed) = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "an answer within 10 s: {answer}");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {answer}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// One request over a fresh HTTP/2 connection (prior knowledge, no TLS)
/// to `addr`, for `uri`: an absolute URI's authority goes as
/// `:authority`, and no `Host` is sent, as browsers do over HTTP/2.
async fn exchange_h2(addr: &str, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    h2_request(stream, method, uri, headers, body).await
}

/// One HTTP/2 request over `io` (plain or TLS): the status and the body.
async fn h2_request<IO>(io: IO, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> (u16, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(io))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    let mut request = hyper::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    assert!(request.headers().get("host").is_none(), "no Host over HTTP/2");
    let answer = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer within 10 s")
        .expect("an HTTP/2 answer");
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Asserts a 421 `host_not_allowed` in the API's JSON error shape.
fn assert_host_refused(what: &str, (status, body): (u16, String)) {
    assert_eq!(status, 421, "{what}: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(body["error"]["code"], "host_not_allowed", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("server.allowed_hosts")),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_shutdown_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(config(
        dir.path(),
        "header_read_timeout = \"300ms\"\nrequest_timeout = \"500ms\"\nshutdown_timeout = \"500ms\"",
    ))
    .await;

    // A head that never ends: the connection is closed.
    let mut slow_head = TcpStream::connect(addr(&hookd)).await.unwrap();
    slow_head
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_all(&mut slow_head, Duration::from_secs(5)).await;
    assert!(closed, "a head that never ends is cut");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(addr(&hookd)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_all(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle keep-alive connection is closed");

    // A body that trickles: 408 at the request timeout, nothing ingested.
    let mut trickle = TcpStream::connect(addr(&hookd)).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"type\""
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (answer, _) = read_all(&mut trickle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // Shutdown with a client in the middle of a request ends in bounded time.
    let mut stuck = TcpStream::connect(addr(&hookd)).await.unwrap();
    stuck
        .write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    hookd.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(config(dir.path(), "max_connections = 2\nheader_read_timeout = \"20s\"")).await;
    // Two connections hold both places (one keeps a head open).
    let mut first = TcpStream::connect(addr(&hookd)).await.unwrap();
    first.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut second = TcpStream::connect(addr(&hookd)).await.unwrap();
    second.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third is not served while they are open...
    let mut third = TcpStream::connect(addr(&hookd)).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_all(&mut third, Duration::from_millis(500)).await;
    assert!(answer.is_empty(), "served beyond the cap: {answer}");
    // ... and is once one of them ends.
    drop(first);
    let (answer, _) = read_all(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
    hookd.stop().await;
}

#[test]
fn an_open_api_beyond_loopback_is_refused_unless_meant() {
    let open = "[server]\nlisten = \"0.0.0.0:8080\"\n";
    let err = Config::from_toml(open).expect_err("no keys on 0.0.0.0").to_string();
    assert!(err.contains("server.api_keys"), "{err}");
    assert!(err.contains("allow_unauthenticated"), "{err}");
    Config::from_toml(&format!("{open}allow_unauthenticated = true\n")).expect("said explicitly");
    Config::from_toml(&format!("{open}api_keys = [\"k-0123456789abcdef\"]\n")).expect("with a key");
    Config::from_toml("[server]\nlisten = \"127.0.0.1:8080\"\n").expect("loopback stays open for local use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_in_any_case_cross_site_refused_metrics_behind_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(config(dir.path(), "metrics_require_key = true")).await;
    let a = addr(&hookd);
    let exchange = |request: String| {
        let a = a.clone();
        async move {
            let mut s = TcpStream::connect(a).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            read_all(&mut s, Duration::from_secs(5)).await.0
        }
    };
    let event = json!({"type": "link.clicked", "data": {"n": 1}}).to_string();
    let post = |auth: &str, origin: &str| {
        format!(
            "POST /v1/events HTTP/1.1\r\nhost: {a}\r\n{auth}{origin}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{event}",
            event.len()
        )
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let answer = exchange(post(&format!("authorization: {scheme} {ADMIN}\r\n"), "")).await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{scheme}: {answer}");
    }
    let answer = exchange(post(&format!("authorization: Basic {ADMIN}\r\n"), "")).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A page of another site may not post, even with a key; this host's may.
    let auth = format!("authorization: Bearer {ADMIN}\r\n");
    let answer = exchange(post(&auth, "origin: http://evil.example\r\n")).await;
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("cross_site"),
        "{answer}"
    );
    let answer = exchange(post(&auth, "sec-fetch-site: cross-site\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = exchange(post(&auth, &format!("origin: http://{a}\r\n"))).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // /metrics needs an admin key now.
    let metrics = |auth: &str| format!("GET /metrics HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n");
    assert!(exchange(metrics("")).await.starts_with("HTTP/1.1 401"));
    let answer = exchange(metrics(&auth)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("hookd_events_ingested_total"),
        "{answer}"
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_when_a_certificate_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let hookd = Hookd::start(config(dir.path(), &tls)).await;
    let a = addr(&hookd);

    // A client trusting the certificate talks HTTPS.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(&a).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut secure = connector.connect(name, tcp).await.expect("TLS handshake");
    let form = format!("key={ADMIN}");
    let request = format!(
        "POST /console/sign-in HTTP/1.1\r\nhost: {a}\r\norigin: https://{a}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{form}",
        form.len()
    );
    secure.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = secure.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: hookd_session="))
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(cookie.contains("Secure") && cookie.contains("HttpOnly"), "{cookie}");

    // Plain HTTP gets no answer.
    let mut plain = TcpStream::connect(&a).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_all(&mut plain, Duration::from_secs(5)).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    hookd.stop().await;

    // A key that is not the certificate's is refused at start, naming it.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let err = hookd::run(
        config(elsewhere.path(), &tls),
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("a key of another certificate");
    assert!(format!("{err:#}").contains("server.tls_key"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_api_answers_only_for_loopback_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(open_config(dir.path(), "")).await;
    let a = addr(&hookd);
    let port = a.rsplit(':').next().unwrap().to_owned();
    let tenant = json!({"id": "acme", "name": "Acme"}).to_string();

    // Another site's name pointed at this machine: refused everywhere but
    // /healthz, and nothing is made.
    let evil = "host: evil.example\r\n";
    let evil_port = format!("host: evil.example:{port}\r\n");
    assert_host_refused(
        "GET /v1/subscriptions",
        exchange(&a, "GET", "/v1/subscriptions", evil, "").await,
    );
    assert_host_refused(
        "POST /v1/tenants",
        exchange(&a, "POST", "/v1/tenants", &evil_port, &tenant).await,
    );
    assert_host_refused("GET /console", exchange(&a, "GET", "/console", evil, "").await);
    let form = "key=anything";
    assert_host_refused(
        "POST /console/sign-in",
        exchange(
            &a,
            "POST",
            "/console/sign-in",
            &format!("{evil}origin: http://evil.example\r\n"),
            form,
        )
        .await,
    );
    for path in ["/metrics", "/readyz", "/v1/nowhere"] {
        assert_host_refused(path, exchange(&a, "GET", path, evil, "").await);
    }
    assert_host_refused(
        "a name under localhost's",
        exchange(&a, "GET", "/v1/subscriptions", "host: localhost.evil.example\r\n", "").await,
    );
    assert_host_refused("no Host", exchange(&a, "GET", "/v1/subscriptions", "", "").await);
    let (status, body) = exchange(&a, "GET", "/healthz", evil, "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    // Over HTTP/2, the :authority is the host.
    assert_host_refused(
        "HTTP/2 GET /v1/subscriptions",
        exchange_h2(
            &a,
            "GET",
            &format!("http://evil.example:{port}/v1/subscriptions"),
            &[],
            "",
        )
        .await,
    );
    assert_host_refused(
        "HTTP/2 POST /v1/tenants",
        exchange_h2(&a, "POST", "http://evil.example/v1/tenants", &[], &tenant).await,
    );

    // Loopback names and addresses, with or without the port, answer.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_owned(),
        format!("console.localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = exchange(&a, "GET", "/v1/subscriptions", &format!("host: {host}\r\n"), "").await;
        assert_eq!(status, 200, "{host}: {body}");
        let (status, body) = exchange(&a, "GET", "/console/sign-in", &format!("host: {host}\r\n"), "").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, body) = exchange_h2(&a, "GET", &format!("http://127.0.0.1:{port}/v1/subscriptions"), &[], "").await;
    assert_eq!(status, 200, "HTTP/2 on loopback: {body}");
    let tenants = hookd.api.get("/v1/tenants").await.unwrap();
    assert_eq!(
        tenants["tenants"],
        json!([]),
        "nothing made by the refused posts: {tenants}"
    );
    let (status, body) = exchange(
        &a,
        "POST",
        "/v1/tenants",
        &format!("host: localhost:{port}\r\n"),
        &tenant,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_are_answered_and_bind_with_keys_too() {
    let dir = tempfile::tempdir().unwrap();
    let open = Hookd::start(open_config(
        dir.path(),
        "allowed_hosts = [\"hooks.example.com\", \"10.0.0.7\"]",
    ))
    .await;
    let a = addr(&open);
    for host in [
        "hooks.example.com",
        "HOOKS.example.com:8080",
        "10.0.0.7:8080",
        "localhost",
    ] {
        let (status, body) = exchange(&a, "GET", "/v1/subscriptions", &format!("host: {host}\r\n"), "").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, body) = exchange_h2(&a, "GET", "https://hooks.example.com/console/sign-in", &[], "").await;
    assert_eq!(status, 200, "HTTP/2 for a listed name: {body}");
    assert_host_refused(
        "a name not listed",
        exchange(&a, "GET", "/v1/subscriptions", "host: other.example.com\r\n", "").await,
    );
    open.stop().await;

    // With keys and no names listed, the host is not looked at (a proxy's
    // name); with names listed, it is, keys or not.
    let auth = format!("authorization: Bearer {ADMIN}\r\n");
    let keyed = Hookd::start(config(&dir.path().join("keyed"), "")).await;
    let (status, body) = exchange(
        &addr(&keyed),
        "GET",
        "/v1/subscriptions",
        &format!("host: proxy.internal\r\n{auth}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    keyed.stop().await;
    let listed = Hookd::start(config(
        &dir.path().join("listed"),
        "allowed_hosts = [\"hooks.example.com\"]",
    ))
    .await;
    let a = addr(&listed);
    let (status, body) = exchange(
        &a,
        "GET",
        "/v1/subscriptions",
        &format!("host: hooks.example.com\r\n{auth}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_host_refused(
        "a name not listed, with a key",
        exchange(
            &a,
            "GET",
            "/v1/subscriptions",
            &format!("host: proxy.internal\r\n{auth}"),
            "",
        )
        .await,
    );
    listed.stop().await;
}

#[test]
fn allowed_hosts_entries_are_host_names_or_addresses() {
    for bad in [
        "https://hooks.example.com",
        "hooks.example.com:443",
        "*.example.com",
        "",
        "a b",
    ] {
        let text = format!("[server]\nallowed_hosts = [\"ok.example\", {bad:?}]\n");
        let err = Config::from_toml(&text).expect_err(bad).to_string();
        assert!(err.contains("server.allowed_hosts[1]"), "{bad:?}: {err}");
    }
    let good = Config::from_toml("[server]\nallowed_hosts = [\"hooks.example.com\", \"10.0.0.7\", \"2001:db8::1\"]\n")
        .expect("names and addresses");
    assert_eq!(good.server.allowed_hosts.len(), 3);
    assert!(
        Config::from_toml("").unwrap().server.allowed_hosts.is_empty(),
        "empty by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_and_its_links_work_over_http2() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let hookd = Hookd::start(config(dir.path(), &tls)).await;
    let a = addr(&hookd);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let connect = || async {
        let tcp = TcpStream::connect(&a).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let secure = connector.connect(name, tcp).await.expect("TLS handshake");
        assert_eq!(secure.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 by ALPN");
        secure
    };

    // Signing in from the console's own page: the Origin matches the
    // :authority.
    let form = format!("key={ADMIN}");
    let origin = format!("https://{a}");
    let headers = [
        ("origin", origin.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let (status, body) = h2_request(
        connect().await,
        "POST",
        &format!("https://{a}/console/sign-in"),
        &headers,
        &form,
    )
    .await;
    assert_eq!(status, 303, "{body}");
    // Another site's page may still not.
    let headers = [
        ("origin", "https://evil.example"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let (status, body) = h2_request(
        connect().await,
        "POST",
        &format!("https://{a}/console/sign-in"),
        &headers,
        &form,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // A link is built on the :authority.
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = h2_request(
        connect().await,
        "POST",
        &format!("https://{a}/v1/console/link"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let link: serde_json::Value = serde_json::from_str(&body).unwrap();
    let url = link["url"].as_str().unwrap_or_default();
    assert!(url.starts_with(&format!("https://{a}/console/link/")), "{link}");
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_shows_the_queue_error_to_an_admin_key_only() {
    let redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\napi_keys = [\"{ADMIN}\"]\n\
         [queue]\nredis_url = {url:?}\nkey_prefix = {prefix:?}\ndata_dir = {dir:?}\n\
         redis_connect_timeout = \"300ms\"\nredis_response_timeout = \"300ms\"\n",
        url = redis.url(),
        prefix = support::unique_prefix("readyz"),
        dir = dir.path().display().to_string(),
    );
    let hookd = Hookd::start(Config::from_toml(&text).unwrap()).await;
    let a = addr(&hookd);
    let producer = hookd
        .api
        .post("/v1/keys", json!({"role": "producer"}).to_string())
        .await
        .unwrap();
    let producer = format!("authorization: Bearer {}\r\n", producer["key"].as_str().unwrap());
    let admin = format!("authorization: Bearer {ADMIN}\r\n");
    let (status, body) = exchange(&a, "GET", "/readyz", "host: x\r\n", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"status": "ready", "log": {"state": "ok", "spooled": 0, "spooled_disk_bytes": 0, "dropped": 0}, "tasks_down": []}),
        "the states without a key"
    );

    // While Redis does not answer: a 503 for everyone, its reason (naming
    // Redis's address) for an admin key only.
    let busy = support::stall_redis(redis.port(), 3_000).await;
    let redis_addr = redis.url().trim_start_matches("redis://").to_owned();
    let mut seen = Vec::new();
    for (who, head) in [
        ("an admin key", format!("host: x\r\n{admin}")),
        ("no key", "host: x\r\n".to_owned()),
        ("a producer key", format!("host: x\r\n{producer}")),
        ("a wrong key", "host: x\r\nauthorization: Bearer nope\r\n".to_owned()),
    ] {
        let (status, body) = exchange(&a, "GET", "/readyz", &head, "").await;
        assert_eq!(status, 503, "{who}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "not_ready", "{who}: {body}");
        seen.push((who, body["error"]["message"].as_str().unwrap_or_default().to_owned()));
    }
    busy.await.unwrap();
    let (_, for_admin) = &seen[0];
    assert!(for_admin.contains(&redis_addr), "the admin is told why: {for_admin}");
    for (who, message) in &seen[1..] {
        assert!(
            !message.contains(&redis_addr) && !message.contains("127.0.0.1"),
            "{who}: {message}"
        );
        assert!(message.contains("admin key"), "{who}: {message}");
    }
    hookd.stop().await;
}

/// One HTTP/2 connection (h2c, prior knowledge) that has made one request
/// and then only answers the server's keep-alive pings: the connection's
/// task, ending when the server closes it, and the server's cap on
/// streams.
async fn idle_h2(addr: &str) -> (tokio::task::JoinHandle<()>, usize) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.expect("an HTTP/2 handshake");
    let request = http::Request::get(format!("http://{addr}/healthz")).body(()).unwrap();
    let mut client = client.ready().await.unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    let answer = tokio::select! {
        answer = answer => answer.expect("an answer"),
        _ = &mut connection => panic!("the connection ended before answering"),
    };
    assert_eq!(answer.status(), 200);
    let streams = connection.max_concurrent_send_streams();
    let task = tokio::spawn(async move {
        // Keeps the client handle, so only the server can end it.
        let _client = client;
        let _ = connection.await;
    });
    (task, streams)
}

/// Idle HTTP/2 connections are closed after server.idle_timeout, so they
/// no longer hold the listener's slots (max_connections) for ever; each
/// connection is told the server's cap on its streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_give_their_slots_back() {
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(config(
        dir.path(),
        "max_connections = 2\nidle_timeout = \"1s\"\nhttp2_max_streams = 7\nheader_read_timeout = \"500ms\"",
    ))
    .await;
    let a = addr(&hookd);
    let (first, streams) = idle_h2(&a).await;
    assert_eq!(
        streams, 7,
        "SETTINGS_MAX_CONCURRENT_STREAMS is server.http2_max_streams"
    );
    let (second, _) = idle_h2(&a).await;
    // Both slots are taken by connections that answer pings and send
    // nothing: a third client is served only once the server closes them.
    let (status, _) = tokio::time::timeout(support::daemon::WAIT, exchange(&a, "GET", "/healthz", "", ""))
        .await
        .expect("a third client is served once the idle connections are closed");
    assert_eq!(status, 200);
    for task in [first, second] {
        tokio::time::timeout(support::daemon::WAIT, task)
            .await
            .expect("the server closed the idle connection")
            .unwrap();
    }
    hookd.stop().await;
}
