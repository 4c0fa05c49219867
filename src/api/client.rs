//! A small client of hookd's own HTTP API, used by the CLI verbs that talk
//! to a running hookd (`send`, `dead`, `delivery`, and the operator verbs
//! whose output [`crate::cli`] renders: `subscriptions`, `deliveries`,
//! `attempts`, `event`, `retry`, `replay`, `enable`, `disable`) and by the
//! demo.
//!
//! It speaks `http://` and `https://` (HTTP/1.1, or HTTP/2 when the server
//! offers it by ALPN), trusting the system's roots and, with
//! [`ApiClient::with_ca_file`], a CA file's certificates: the way to reach
//! a hookd serving its own certificate (`server.tls_cert`). An answer is
//! read up to [`MAX_ANSWER_BYTES`]: a server (or something pretending to
//! be one) cannot make the CLI hold an unbounded body.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The most of one answer the client reads, bytes (16 MiB: a page of the
/// largest listing is a few MiB).
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Why a call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL or path does not make a URL.
    #[error("bad hookd URL `{0}`: use something like http://127.0.0.1:8080")]
    Url(String),
    /// hookd could not be reached.
    #[error("cannot reach hookd at {url}: {reason} (is `hookd serve` running there?)")]
    Unreachable { url: String, reason: String },
    /// hookd answered with an error.
    #[error("hookd answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// hookd answered something that is not JSON.
    #[error("hookd answered something that is not JSON: {0}")]
    Body(String),
    /// hookd's answer is larger than [`MAX_ANSWER_BYTES`].
    #[error("hookd's answer from {url} is over the client's limit of {limit} bytes")]
    TooLarge { url: String, limit: usize },
    /// The CA file given cannot be used.
    #[error("--ca-file {path}: {problem}")]
    CaFile { path: String, problem: String },
}

/// Talks to one hookd.
#[derive(Clone)]
pub struct ApiClient {
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// Bearer key, if the server wants one.
    api_key: Option<String>,
    /// The `user-agent` sent, if any.
    user_agent: Option<String>,
    /// HTTP or HTTPS client with keep-alive.
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ApiClient {
    /// A client of the hookd at `base` (`http://127.0.0.1:8080`, or
    /// `https://…`, trusting the system's roots).
    pub fn new(base: &str, api_key: Option<String>) -> ApiClient {
        ApiClient::with_roots(base, api_key, system_roots())
    }

    /// A client of the hookd at `base` that trusts the certificates in the
    /// PEM file `ca_file` as well as the system's roots.
    pub fn with_ca_file(base: &str, api_key: Option<String>, ca_file: &Path) -> Result<ApiClient, Error> {
        let mut roots = system_roots();
        crate::deliver::read_ca_file(&mut roots, ca_file).map_err(|problem| Error::CaFile {
            path: ca_file.display().to_string(),
            problem,
        })?;
        Ok(ApiClient::with_roots(base, api_key, roots))
    }

    fn with_roots(base: &str, api_key: Option<String>, roots: rustls::RootCertStore) -> ApiClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            api_key,
            user_agent: None,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The same client, sending `user-agent: hookd-cli/<version>`, by which
    /// hookd counts events from `hookd send` as `source="cli"`.
    pub fn as_cli(mut self) -> ApiClient {
        self.user_agent = Some(format!("{}{}", super::CLI_USER_AGENT_PREFIX, env!("CARGO_PKG_VERSION")));
        self
    }

    /// The bearer key this client sends, if any.
    pub fn key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// The base URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `path` and returns its JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, Error> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// POSTs `body` (JSON) to `path` and returns the answer's JSON.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Result<serde_json::Value, Error> {
        self.call(Method::POST, path, body.into()).await
    }

    /// PATCHes `path` with `body` (a JSON merge patch) and returns the
    /// answer's JSON.
    pub async fn patch(&self, path: &str, body: impl Into<Bytes>) -> Result<serde_json::Value, Error> {
        self.call(Method::PATCH, path, body.into()).await
    }

    /// PUTs `body` (JSON) to `path` and returns the answer's JSON.
    pub async fn put(&self, path: &str, body: impl Into<Bytes>) -> Result<serde_json::Value, Error> {
        self.call(Method::PUT, path, body.into()).await
    }

    /// DELETEs `path` and returns the answer's JSON.
    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, Error> {
        self.call(Method::DELETE, path, Bytes::new()).await
    }

    /// The same client, sending `key` as its bearer key.
    pub fn with_key(&self, key: impl Into<String>) -> ApiClient {
        ApiClient {
            api_key: Some(key.into()),
            ..self.clone()
        }
    }

    /// The status of an error answer, if the call got one.
    pub fn status_of(result: &Result<serde_json::Value, Error>) -> Option<u16> {
        match result {
            Err(Error::Status { status, .. }) => Some(status.as_u16()),
            Ok(_) => Some(200),
            Err(_) => None,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<serde_json::Value, Error> {
        let url = format!("{}{}", self.base, path);
        let uri: Uri = url.parse().map_err(|_| Error::Url(url.clone()))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(agent) = &self.user_agent {
            request = request.header(header::USER_AGENT, agent.as_str());
        }
        if let Some(key) = &self.api_key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request.body(Full::new(body)).map_err(|_| Error::Url(url.clone()))?;
        let unreachable = |reason: String| Error::Unreachable {
            url: url.clone(),
            reason,
        };
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| unreachable("no answer within 30s".into()))?
            .map_err(|e| unreachable(crate::deliver::describe(&e)))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Error::TooLarge {
                        url: url.clone(),
                        limit: MAX_ANSWER_BYTES,
                    }
                } else {
                    unreachable(e.to_string())
                }
            })?
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| Error::Body(String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()))?;
        if !status.is_success() {
            let message = json["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| json.to_string());
            return Err(Error::Status { status, message });
        }
        Ok(json)
    }
}

/// How long the client waits for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The system's CA certificates (none if it has none: then only a CA file
/// makes `https://` work).
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}
