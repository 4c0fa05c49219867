//! A small client of hookd's own HTTP API, used by the CLI verbs that talk
//! to a running hookd (`send`, `dead`, `delivery`, and the operator verbs
//! whose output [`crate::cli`] renders: `subscriptions`, `deliveries`,
//! `attempts`, `event`, `retry`, `replay`, `enable`, `disable`) and by the
//! demo.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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
    /// Plain HTTP/1.1 client with keep-alive.
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl ApiClient {
    /// A client of the hookd at `base` (`http://127.0.0.1:8080`).
    pub fn new(base: &str, api_key: Option<String>) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            api_key,
            user_agent: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
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
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
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
