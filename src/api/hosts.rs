//! Which host a request is for, and which pages may send it: the two
//! rules that keep a browser on another site from using hookd.
//!
//! - [`check_host`]: an API without `server.api_keys` answers only to
//!   loopback names and `server.allowed_hosts` (and, with names listed,
//!   so does one with keys); any other `Host` is a 421
//!   `host_not_allowed`. Without it, a page whose DNS name is pointed at
//!   127.0.0.1 after it loads (DNS rebinding) would be same-origin with
//!   the open API, and an admin.
//! - [`same_origin`]: a state-changing request from a browser page of
//!   another site is refused, by the API (403 `cross_site`) and the
//!   console alike.
//!
//! Both read the host from `Host`, or else the request URI's authority:
//! HTTP/2 clients (browsers over the built-in HTTPS) send `:authority`
//! and no `Host`, and hyper puts `:authority` in the URI.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::config::ServerConfig;
use crate::model::Host;

/// The one route [`check_host`] lets through under any host: it says only
/// that the process is up, and load balancers probe it by address or by
/// names of their own.
const UNCHECKED_PATH: &str = "/healthz";

/// The host a request names, port included: its `Host` header, or else
/// its URI's authority (HTTP/2's `:authority`); `None` if it names none.
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Whether a request may change something: any but a browser's from a
/// page of another site. Reading (`GET`, `HEAD`, `OPTIONS`) always may.
/// Browsers send `Origin` with every cross-site POST (a form's too), and
/// `Sec-Fetch-Site`; without `Origin`, its `Referer` is compared. A
/// request with neither is not a browser's (API clients send neither),
/// and cannot carry a `SameSite=Strict` cookie from another site anyway.
pub fn same_origin(method: &Method, headers: &HeaderMap, uri: &Uri) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER)) else {
        return true;
    };
    let (Ok(origin), Some(host)) = (origin.to_str(), request_host(headers, uri)) else {
        return false;
    };
    // `null` (a sandboxed or file page) has no scheme, and matches nothing.
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    rest.split('/').next() == Some(host)
}

/// Whether `server` answers a request for `host` (as [`request_host`]
/// gives it): always for a loopback name or address, else only if it is
/// in `server.allowed_hosts`, or if the API has keys and the list is
/// empty.
pub fn host_allowed(server: &ServerConfig, host: Option<&str>) -> bool {
    let open = server.api_keys.is_empty();
    if !open && server.allowed_hosts.is_empty() {
        return true;
    }
    let Some(host) = host.and_then(Host::of_authority) else {
        return false;
    };
    host.is_loopback()
        || server
            .allowed_hosts
            .iter()
            .filter_map(|listed| Host::parse(listed).ok())
            .any(|listed| listed == host)
}

/// Refuses, with a 421 `host_not_allowed`, a request for a host that
/// [`host_allowed`] does not answer, on every route but `/healthz`.
pub async fn check_host(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    if request.uri().path() == UNCHECKED_PATH {
        return next.run(request).await;
    }
    let snapshot = state.catalog.snapshot();
    let server = &snapshot.config.server;
    let host = request_host(request.headers(), request.uri());
    if host_allowed(server, host) {
        drop(snapshot);
        return next.run(request).await;
    }
    let named = match host {
        Some(host) => format!("host `{}`", host.escape_default()),
        None => "a request without a host".to_owned(),
    };
    let why = if server.api_keys.is_empty() {
        "an API without server.api_keys answers only to loopback names (localhost, 127.0.0.1, [::1]) \
         and server.allowed_hosts"
    } else {
        "it is not in server.allowed_hosts"
    };
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "host_not_allowed",
        format!("hookd does not answer for {named}: {why}; list the name in server.allowed_hosts if it is meant"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(toml: &str) -> ServerConfig {
        crate::config::Config::from_toml(toml).unwrap().server
    }

    #[test]
    fn the_host_is_checked_without_keys_or_with_names_listed() {
        let open = server("");
        let keyed = server("[server]\napi_keys = [\"k-0123456789abcdef\"]\n");
        let listed = server("[server]\nallowed_hosts = [\"hooks.example.com\", \"10.0.0.7\"]\n");
        let both = server("[server]\napi_keys = [\"k-0123456789abcdef\"]\nallowed_hosts = [\"hooks.example.com\"]\n");
        let cases: &[(&ServerConfig, Option<&str>, bool)] = &[
            (&open, Some("localhost:8080"), true),
            (&open, Some("127.0.0.1:8080"), true),
            (&open, Some("[::1]:8080"), true),
            (&open, Some("evil.example"), false),
            (&open, Some("hooks.example.com"), false),
            (&open, None, false),
            (&open, Some("evil example"), false),
            (&keyed, Some("evil.example"), true),
            (&keyed, None, true),
            (&listed, Some("HOOKS.example.com:443"), true),
            (&listed, Some("10.0.0.7:8080"), true),
            (&listed, Some("localhost"), true),
            (&listed, Some("evil.example"), false),
            (&both, Some("hooks.example.com"), true),
            (&both, Some("127.0.0.1:1"), true),
            (&both, Some("evil.example"), false),
            (&both, None, false),
        ];
        for (n, (server, host, want)) in cases.iter().enumerate() {
            assert_eq!(host_allowed(server, *host), *want, "case {n}: {host:?}");
        }
    }

    #[test]
    fn same_origin_reads_host_or_else_the_authority() {
        let post = Method::POST;
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, value.parse().unwrap());
            }
            h
        };
        let path: Uri = "/console/sign-in".parse().unwrap();
        let h2: Uri = "https://hooks.example.com:8443/console/sign-in".parse().unwrap();
        let cases: &[(&Method, HeaderMap, &Uri, bool)] = &[
            (
                &Method::GET,
                headers(&[("origin", "https://evil.example")]),
                &path,
                true,
            ),
            (&post, headers(&[("host", "h:1")]), &path, true),
            (
                &post,
                headers(&[("host", "h:1"), ("origin", "http://h:1")]),
                &path,
                true,
            ),
            (
                &post,
                headers(&[("host", "h:1"), ("origin", "https://h:1")]),
                &path,
                true,
            ),
            (
                &post,
                headers(&[("host", "h:1"), ("origin", "http://evil.example")]),
                &path,
                false,
            ),
            (&post, headers(&[("host", "h:1"), ("origin", "null")]), &path, false),
            (
                &post,
                headers(&[("host", "h:1"), ("referer", "http://h:1/console")]),
                &path,
                true,
            ),
            (
                &post,
                headers(&[("host", "h:1"), ("referer", "http://evil.example/h:1")]),
                &path,
                false,
            ),
            (
                &post,
                headers(&[("host", "h:1"), ("sec-fetch-site", "cross-site")]),
                &path,
                false,
            ),
            (&post, headers(&[("origin", "http://h:1")]), &path, false),
            // HTTP/2: no Host, the authority in the URI.
            (
                &post,
                headers(&[("origin", "https://hooks.example.com:8443")]),
                &h2,
                true,
            ),
            (&post, headers(&[("origin", "https://evil.example")]), &h2, false),
        ];
        for (n, (method, headers, uri, want)) in cases.iter().enumerate() {
            assert_eq!(same_origin(method, headers, uri), *want, "case {n}: {headers:?} {uri}");
        }
    }
}
