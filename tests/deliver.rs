//! The delivery client against real hyper servers on 127.0.0.1 (plain and
//! TLS), with real sockets: no mocks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use hookd::config::{Config, DeliveryConfig, Secret};
use hookd::deliver::{Client, Failure, Request};
use hookd::sign::{self, Signer, Verifier};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the test server answers.
#[derive(Clone)]
enum Behaviour {
    /// 200 with a short body.
    Ok,
    /// 302 to the given location.
    Redirect(String),
    /// Never answers.
    Hang,
    /// 200 with this many bytes of body (`i % 251`).
    Big(usize),
    /// 200 whose body sends `partial` and then stalls forever.
    StallBody,
    /// 200 after a pause, to keep many requests in flight at once.
    Slow(Duration),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: http::Method,
    path: String,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

/// A real hyper server (HTTP/1.1 and HTTP/2, optionally over TLS) that
/// counts connections and records requests.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(behaviour: Behaviour) -> Server {
        Self::start_with(behaviour, None).await
    }

    async fn start_with(behaviour: Behaviour, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let connections = connections.clone();
            let seen = seen.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let behaviour = behaviour.clone();
                    let seen = seen.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(req, behaviour.clone(), seen.clone()));
                        let builder = auto::Builder::new(TokioExecutor::new());
                        match tls {
                            Some(acceptor) => {
                                let Ok(stream) = acceptor.accept(stream).await else {
                                    return;
                                };
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    });
                }
            }
        });
        Server {
            addr,
            connections,
            seen,
            task,
        }
    }

    fn url(&self, path: &str) -> http::Uri {
        format!("http://{}{path}", self.addr).parse().unwrap()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    req: http::Request<Incoming>,
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<http::Response<BoxBody<Bytes, Infallible>>, hyper::Error> {
    let (head, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    seen.lock().unwrap().push(Seen {
        method: head.method,
        path: head.uri.path().to_string(),
        version: head.version,
        headers: head.headers,
        body,
    });
    let full = |bytes: Bytes| Full::new(bytes).boxed();
    let response = match behaviour {
        Behaviour::Ok => http::Response::new(full(Bytes::from_static(b"thanks"))),
        Behaviour::Redirect(location) => http::Response::builder()
            .status(StatusCode::FOUND)
            .header(http::header::LOCATION, location)
            .body(full(Bytes::new()))
            .unwrap(),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Big(n) => http::Response::new(full((0..n).map(|i| (i % 251) as u8).collect())),
        Behaviour::StallBody => http::Response::new(Stall(Some(Bytes::from_static(b"partial"))).boxed()),
        Behaviour::Slow(pause) => {
            tokio::time::sleep(pause).await;
            http::Response::new(full(Bytes::from_static(b"slow")))
        }
    };
    Ok(response)
}

/// A response body that yields one chunk and then never ends.
struct Stall(Option<Bytes>);

impl Body for Stall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => Poll::Pending,
        }
    }
}

/// The default delivery configuration, with plain http and private
/// addresses allowed (the test servers are on loopback).
fn config() -> DeliveryConfig {
    let mut c = Config::from_toml("").unwrap().delivery;
    c.allow_http = true;
    c.allow_private_networks = true;
    c
}

fn guarded_config() -> DeliveryConfig {
    DeliveryConfig {
        allow_private_networks: false,
        ..config()
    }
}

fn request(url: http::Uri) -> Request {
    Request {
        url,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"{}"),
        timeout: Duration::from_secs(5),
        network: None,
    }
}

/// A signed request as the dispatcher would build it.
fn signed_request(url: http::Uri, body: &'static [u8]) -> Request {
    let signer = Signer::new(&[Secret::new(SECRET)]).unwrap();
    let id = "evt_01HZX";
    let timestamp = chrono::Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    };
    set(sign::HEADER_WEBHOOK_ID, id.to_string());
    set(sign::HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string());
    set(sign::HEADER_WEBHOOK_SIGNATURE, signer.sign(id, timestamp, body));
    set(sign::HEADER_CONTENT_DIGEST, sign::content_digest(body));
    set("content-type", "application/json".into());
    set("user-agent", "hookd/test".into());
    set("x-tenant", "acme".into());
    Request {
        url,
        headers,
        body: Bytes::from_static(body),
        timeout: Duration::from_secs(5),
        network: None,
    }
}

#[tokio::test]
async fn post_arrives_with_headers_and_body_intact() {
    let server = Server::start(Behaviour::Ok).await;
    let client = Client::new(&config()).unwrap();
    let body = br#"{"type":"coupon.redeemed","timestamp":"2024-05-01T12:00:00Z","data":{"code":"X1"}}"#;
    let response = client
        .send(signed_request(server.url("/hooks/in"), body))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(&response.body[..], b"thanks");

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let got = &seen[0];
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.path, "/hooks/in");
    assert_eq!(got.version, Version::HTTP_11);
    assert_eq!(&got.body[..], &body[..]);
    assert_eq!(got.headers["x-tenant"], "acme");
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(got.headers["content-length"], body.len().to_string().as_str());
    assert_eq!(got.headers["host"], server.addr.to_string().as_str());
    // The receiver's side of the contract: it verifies.
    Verifier::new(&[SECRET])
        .unwrap()
        .verify(&got.headers, &got.body)
        .unwrap();
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let server = Server::start(Behaviour::Ok).await;
    let client = Client::new(&config()).unwrap();
    for _ in 0..5 {
        let response = client.send(request(server.url("/"))).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
    }
    assert_eq!(server.seen().len(), 5);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn hundreds_of_concurrent_requests_to_one_host() {
    let server = Server::start(Behaviour::Slow(Duration::from_millis(50))).await;
    let client = Client::new(&config()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let client = client.clone();
        let url = server.url("/");
        tasks.spawn(async move { client.send(request(url)).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().status, StatusCode::OK);
    }
    assert_eq!(server.seen().len(), 300);
}

#[tokio::test]
async fn private_addresses_are_blocked_before_any_connection() {
    let server = Server::start(Behaviour::Ok).await;
    let client = Client::new(&guarded_config()).unwrap();
    let port = server.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
    ] {
        let failure = client.send(request(url.parse().unwrap())).await.unwrap_err();
        match &failure {
            Failure::Blocked { addr, reason, .. } => {
                let addr = addr.expect("the operator is told the address");
                assert!(
                    addr.is_loopback() || addr.to_string().contains("127.0.0.1"),
                    "{url}: {failure}"
                );
                assert_eq!(*reason, "loopback", "{url}");
            }
            other => panic!("{url}: expected Blocked, got {other:?}"),
        }
        assert_eq!(failure.kind(), "blocked");
        assert!(!failure.is_retryable());
        assert!(
            failure.to_string().contains("delivery.allow_private_networks = true"),
            "{failure}"
        );
    }
    // Give a stray connection time to be accepted, were there one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.connections(), 0);
    assert!(server.seen().is_empty());
}

/// A tenant's subscription follows its plan's policy, not `[delivery]`'s:
/// an operator that reaches its own private network gives tenants none of
/// it, and a tenant's refusal names its plan's key and never the address
/// a host resolved to.
#[tokio::test]
async fn a_tenants_attempt_follows_its_plans_network_policy() {
    use hookd::config::PlanConfig;
    use hookd::deliver::NetworkPolicy;
    let server = Server::start(Behaviour::Ok).await;
    // The operator allows http and private networks.
    let client = Client::new(&config()).unwrap();
    let port = server.addr.port();
    let https_only = NetworkPolicy::of_plan("free", &PlanConfig::default());
    let http_only = NetworkPolicy::of_plan(
        "free",
        &PlanConfig {
            allow_http: Some(true),
            ..PlanConfig::default()
        },
    );
    let tenant = |url: String, policy: &NetworkPolicy| Request {
        network: Some(policy.clone()),
        ..request(url.parse().unwrap())
    };
    let failure = client
        .send(tenant(format!("http://127.0.0.1:{port}/"), &https_only))
        .await
        .unwrap_err();
    assert!(
        failure.to_string().contains("set plans.free.allow_http = true"),
        "{failure}"
    );
    for url in [format!("http://127.0.0.1:{port}/"), format!("http://localhost:{port}/")] {
        let failure = client.send(tenant(url.clone(), &http_only)).await.unwrap_err();
        assert_eq!(failure.kind(), "blocked", "{url}: {failure}");
        let text = failure.to_string();
        assert!(text.contains("set plans.free.allow_private_networks = true"), "{text}");
        if url.contains("localhost") {
            assert_eq!(
                text,
                "localhost resolves to a loopback address; set plans.free.allow_private_networks = true to allow it"
            );
            assert!(matches!(failure, Failure::Blocked { addr: None, .. }), "{failure:?}");
        }
    }
    // The same client still reaches the operator's own.
    let response = client
        .send(request(format!("http://localhost:{port}/").parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(server.seen().len(), 1, "the tenant's attempts reached nothing");
    // A plan that allows both reaches it too.
    let open = NetworkPolicy::of_plan(
        "internal",
        &PlanConfig {
            allow_http: Some(true),
            allow_private_networks: Some(true),
            ..PlanConfig::default()
        },
    );
    let response = client
        .send(tenant(format!("http://localhost:{port}/"), &open))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn private_addresses_go_through_when_allowed() {
    let server = Server::start(Behaviour::Ok).await;
    let client = Client::new(&config()).unwrap();
    let port = server.addr.port();
    for url in [format!("http://127.0.0.1:{port}/"), format!("http://localhost:{port}/")] {
        let response = client.send(request(url.parse().unwrap())).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{url}");
    }
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test]
async fn http_is_refused_unless_allowed() {
    let server = Server::start(Behaviour::Ok).await;
    let client = Client::new(&DeliveryConfig {
        allow_http: false,
        ..config()
    })
    .unwrap();
    let failure = client.send(request(server.url("/"))).await.unwrap_err();
    assert!(failure.to_string().contains("delivery.allow_http"), "{failure}");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn a_hanging_server_times_out() {
    let server = Server::start(Behaviour::Hang).await;
    let client = Client::new(&config()).unwrap();
    let timeout = Duration::from_millis(300);
    let failure = client
        .send(Request {
            timeout,
            ..request(server.url("/"))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(failure, Failure::Timeout { after } if after == timeout),
        "{failure:?}"
    );
    assert_eq!(failure.kind(), "timeout");
    assert!(failure.is_retryable());
}

#[tokio::test]
async fn a_stalled_body_keeps_what_arrived() {
    let server = Server::start(Behaviour::StallBody).await;
    let client = Client::new(&config()).unwrap();
    let response = client
        .send(Request {
            timeout: Duration::from_millis(300),
            ..request(server.url("/"))
        })
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(&response.body[..], b"partial");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::new(&config()).unwrap();
    let failure = client
        .send(request(format!("http://{addr}/").parse().unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(failure, Failure::Connect(_)), "{failure:?}");
    assert_eq!(failure.kind(), "connect");
    assert!(failure.is_retryable());
    assert!(failure.to_string().to_lowercase().contains("refused"), "{failure}");
}

#[tokio::test]
async fn an_unknown_host_is_a_connect_failure() {
    let client = Client::new(&guarded_config()).unwrap();
    let failure = client
        .send(request("http://no-such-host.invalid/".parse().unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(failure, Failure::Connect(_)), "{failure:?}");
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let target = Server::start(Behaviour::Ok).await;
    let redirecting = Server::start(Behaviour::Redirect(target.url("/elsewhere").to_string())).await;
    let client = Client::new(&config()).unwrap();
    let response = client.send(request(redirecting.url("/"))).await.unwrap();
    assert_eq!(response.status, StatusCode::FOUND);
    assert_eq!(
        response.headers[http::header::LOCATION],
        target.url("/elsewhere").to_string().as_str()
    );
    assert_eq!(redirecting.seen().len(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn the_response_body_is_cut_at_the_limit() {
    let server = Server::start(Behaviour::Big(100_000)).await;
    let client = Client::new(&DeliveryConfig {
        response_body_limit: 100,
        ..config()
    })
    .unwrap();
    let response = client.send(request(server.url("/"))).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let expected: Vec<u8> = (0..100).map(|i| (i % 251) as u8).collect();
    assert_eq!(&response.body[..], &expected[..]);

    // A body under the limit comes back whole.
    let small = Server::start(Behaviour::Big(50)).await;
    let response = client.send(request(small.url("/"))).await.unwrap();
    assert_eq!(response.body.len(), 50);
}

/// A TLS server with a fresh self-signed certificate for 127.0.0.1 and
/// localhost, offering h2 and http/1.1; returns it and the cert's PEM.
async fn tls_server() -> (Server, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    (Server::start_with(Behaviour::Ok, Some(acceptor)).await, cert_pem)
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_failure() {
    let (server, _) = tls_server().await;
    let client = Client::new(&config()).unwrap();
    let url = format!("https://127.0.0.1:{}/", server.addr.port()).parse().unwrap();
    let failure = client.send(request(url)).await.unwrap_err();
    assert!(matches!(failure, Failure::Tls(_)), "{failure:?}");
    assert_eq!(failure.kind(), "tls");
    assert!(failure.is_retryable());
    assert!(failure.to_string().contains("delivery.ca_file"), "{failure}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn a_certificate_from_ca_file_is_trusted_and_h2_is_negotiated() {
    let (server, cert_pem) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert_pem).unwrap();
    let client = Client::new(&DeliveryConfig {
        ca_file: Some(ca_file),
        ..config()
    })
    .unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}/hooks", server.addr.port()).parse().unwrap();
        let response = client.send(signed_request(url, b"{\"over\":\"tls\"}")).await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{host}");
        assert_eq!(&response.body[..], b"thanks");
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    for got in &seen {
        assert_eq!(got.version, Version::HTTP_2);
        assert_eq!(&got.body[..], b"{\"over\":\"tls\"}");
        Verifier::new(&[SECRET])
            .unwrap()
            .verify(&got.headers, &got.body)
            .unwrap();
    }
}

#[tokio::test]
async fn a_bad_ca_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello, I am not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for path in [not_pem, missing] {
        let err = Client::new(&DeliveryConfig {
            ca_file: Some(path.clone()),
            ..config()
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("delivery.ca_file"), "{text}");
    }
}
