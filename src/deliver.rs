//! The outbound HTTP client: one POST per attempt, classified.
//!
//! One [`Client`] serves the whole process: hyper's pooled client over
//! rustls (system roots plus `delivery.ca_file`), ALPN `h2` and `http/1.1`
//! for https, HTTP/1.1 for plain http. Connections are kept alive and
//! reused; HTTP/2 connections are multiplexed.
//!
//! [`Client::send`] makes one attempt and returns either the [`Response`]
//! (any status: redirects are never followed, a 3xx is just returned) or a
//! [`Failure`] naming its kind. Whether and when to retry is decided
//! upstream, in the dispatcher; this module only reports.
//!
//! ## The SSRF guard
//!
//! Unless its subscription's [`NetworkPolicy`] allows private networks
//! (`delivery.allow_private_networks` for the operator's subscriptions,
//! `plans.X.allow_private_networks` for a tenant's, never the operator's
//! setting), hookd refuses to connect to any address that is not public
//! ([`is_public`]). The two kinds of policy dial from separate connection
//! pools, so a connection one opened is never reused by the other. Host names are checked
//! after DNS resolution, on the very addresses the connector will dial (the
//! resolver drops non-public ones and fails when none is left), so a name
//! that resolves to `10.0.0.1`, or that changes its answer between
//! configuration and delivery, is caught at connect time. IP literals, which
//! hyper dials without resolving, are checked before the request is sent.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::DeliveryConfig;

/// How long an idle pooled connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive probes on delivery connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A problem building the [`Client`] at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `delivery.ca_file` cannot be read or holds no usable certificate.
    #[error("cannot use delivery.ca_file {}: {problem}; give a PEM file of CA certificates", path.display())]
    CaFile {
        /// The file configured.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the TLS configuration.
    #[error("cannot set up TLS for deliveries: {0}")]
    Tls(String),
}

/// One attempt to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// Endpoint URL (`https://`, or `http://` when `delivery.allow_http`).
    pub url: http::Uri,
    /// Every header to send (signature, id, timestamp, digest, user-agent,
    /// content-type, custom); `host` and `content-length` are set here.
    pub headers: http::HeaderMap,
    /// The exact bytes that were signed.
    pub body: Bytes,
    /// Bound on connect + send + response head, and on the whole attempt
    /// including the bounded read of the response body.
    pub timeout: Duration,
    /// Which endpoints this attempt may reach: its subscription's owner's
    /// policy; `None`, the operator's (`[delivery]`).
    pub network: Option<NetworkPolicy>,
}

/// Which endpoints a subscription may reach, and which keys its refusals
/// name. The operator's subscriptions follow `delivery.allow_http` and
/// `delivery.allow_private_networks`; a tenant's follow its plan only
/// (`plans.X.allow_http`, `plans.X.allow_private_networks`, off unless
/// set), so tenants never inherit the operator's exceptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// `http://` URLs are accepted.
    pub allow_http: bool,
    /// Loopback, private and other non-public addresses are reachable.
    pub allow_private_networks: bool,
    /// The table whose keys set them, named by refusals (`delivery`,
    /// `plans.free`).
    pub from: String,
    /// Whether a refusal names the address a host resolved to: yes for
    /// the operator, never for a tenant (it would map the platform's
    /// network for a stranger).
    pub reveal_addresses: bool,
}

impl NetworkPolicy {
    /// The operator's: `[delivery]`'s.
    pub fn operator(config: &DeliveryConfig) -> NetworkPolicy {
        NetworkPolicy {
            allow_http: config.allow_http,
            allow_private_networks: config.allow_private_networks,
            from: "delivery".into(),
            reveal_addresses: true,
        }
    }

    /// A tenant's on plan `name` (with `plans.default`'s settings where it
    /// leaves them out, as [`crate::config::PlanConfig::or`] merges).
    pub fn of_plan(name: &str, plan: &crate::config::PlanConfig) -> NetworkPolicy {
        NetworkPolicy {
            allow_http: plan.allow_http.unwrap_or(false),
            allow_private_networks: plan.allow_private_networks.unwrap_or(false),
            from: format!("plans.{name}"),
            reveal_addresses: false,
        }
    }
}

/// What the endpoint answered.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status, whatever it is (a 3xx is returned, never followed).
    pub status: http::StatusCode,
    /// The response headers (`Retry-After` lives here).
    pub headers: http::HeaderMap,
    /// At most `delivery.response_body_limit` first bytes of the body; the
    /// rest is dropped unread. If the body stalls or breaks after the head,
    /// this holds what arrived: the status decides the outcome, not the body.
    pub body: Bytes,
}

/// Why an attempt got no HTTP response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// No response head within the attempt's timeout.
    #[error("no response within {after:?}: the endpoint is slow or unreachable; raise the subscription's timeout if it needs longer")]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection could not be made or broke: DNS failure, refused,
    /// reset or closed early.
    #[error("cannot reach the endpoint: {0}")]
    Connect(String),
    /// The TLS handshake failed: untrusted or invalid certificate, name
    /// mismatch, no common protocol.
    #[error("TLS handshake failed: {0}; if the endpoint uses a private CA, add it to delivery.ca_file")]
    Tls(String),
    /// The endpoint's address is not public and private networks are not
    /// allowed. Permanent: retrying cannot help.
    #[error(
        "{}; set {from}.allow_private_networks = true to allow it",
        blocked_message(host, addr.as_ref(), reason)
    )]
    Blocked {
        /// The host of the URL.
        host: String,
        /// The address refused (the first one, when several were); `None`
        /// where the policy does not reveal addresses (a tenant's).
        addr: Option<IpAddr>,
        /// What kind of address it is (`loopback`, `private`, …).
        reason: &'static str,
        /// The table of the policy that refused it (`delivery`, `plans.free`).
        from: String,
    },
    /// The HTTP exchange itself failed: malformed response, HTTP/2 error,
    /// unusable URL.
    #[error("HTTP exchange failed: {0}")]
    Protocol(String),
}

impl Failure {
    /// The kind, as recorded in attempt logs and metrics:
    /// `timeout`, `connect`, `tls`, `blocked` or `protocol`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout { .. } => "timeout",
            Failure::Connect(_) => "connect",
            Failure::Tls(_) => "tls",
            Failure::Blocked { .. } => "blocked",
            Failure::Protocol(_) => "protocol",
        }
    }

    /// Whether another attempt may succeed. Only [`Failure::Blocked`] is
    /// permanent: the address policy will not change between retries.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Failure::Blocked { .. })
    }
}

/// One of the client's connection pools.
type Pool = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// The process's delivery client; clones share its connection pools.
#[derive(Clone)]
pub struct Client {
    /// hyper's pooled client for policies that keep to public addresses:
    /// guarded DNS, TCP, then rustls for https.
    guarded: Pool,
    /// The same, its resolver returning every address, for policies that
    /// allow private networks. Its own pool: a connection it made is never
    /// reused by an attempt the guard would have refused.
    open: Pool,
    /// The operator's policy, for requests that name none.
    operator: NetworkPolicy,
    /// `delivery.response_body_limit`: bytes of response body kept.
    response_body_limit: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("operator", &self.operator)
            .field("response_body_limit", &self.response_body_limit)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the client: trust store, TLS, connector and pool.
    pub fn new(config: &DeliveryConfig) -> Result<Client, Error> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(%error, "some system CA certificates could not be loaded");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system CA certificates loaded");
        if let Some(path) = &config.ca_file {
            add_ca_file(&mut roots, path)?;
        }
        if roots.is_empty() {
            tracing::warn!("no trusted CA certificates: every https delivery will fail; install the system CA bundle or set delivery.ca_file");
        }

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let pool = |allow_private_networks: bool| {
            let mut tcp = HttpConnector::new_with_resolver(GuardedResolver { allow_private_networks });
            tcp.enforce_http(false);
            tcp.set_nodelay(true);
            tcp.set_keepalive(Some(TCP_KEEPALIVE));
            tcp.set_connect_timeout(Some(config.timeout));
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(tcp);
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                // Idle HTTP/1.1 connections kept per host: enough for every
                // delivery in flight to land on one endpoint.
                .pool_max_idle_per_host(config.max_in_flight.max(64))
                .build(connector)
        };

        Ok(Client {
            guarded: pool(false),
            open: pool(true),
            operator: NetworkPolicy::operator(config),
            response_body_limit: config.response_body_limit,
        })
    }

    /// Sends one POST and waits for the response head, then reads at most
    /// `response_body_limit` bytes of the body, all within `req.timeout`.
    pub async fn send(&self, req: Request) -> Result<Response, Failure> {
        let deadline = tokio::time::Instant::now() + req.timeout.min(Duration::from_secs(365 * 24 * 3600));
        let policy = req.network.as_ref().unwrap_or(&self.operator);
        check_url(&req.url, policy)?;
        let http = if policy.allow_private_networks {
            &self.open
        } else {
            &self.guarded
        };
        let policy = policy.clone();

        let mut request = http::Request::new(Full::new(req.body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = req.url;
        *request.headers_mut() = req.headers;

        let response = match tokio::time::timeout_at(deadline, http.request(request)).await {
            Err(_) => return Err(Failure::Timeout { after: req.timeout }),
            Ok(Err(error)) => {
                return Err(match classify(&error) {
                    Failure::Blocked { host, addr, reason, .. } => Failure::Blocked {
                        host,
                        addr: addr.filter(|_| policy.reveal_addresses),
                        reason,
                        from: policy.from,
                    },
                    other => other,
                })
            }
            Ok(Ok(response)) => response,
        };
        let (head, mut body) = response.into_parts();

        let limit = self.response_body_limit;
        let mut kept = BytesMut::new();
        while kept.len() < limit {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let take = data.len().min(limit - kept.len());
                        kept.extend_from_slice(&data[..take]);
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    tracing::debug!(%error, "response body broke off; keeping what arrived");
                    break;
                }
                Err(_) => {
                    tracing::debug!("response body still arriving at the timeout; keeping what arrived");
                    break;
                }
            }
        }

        Ok(Response {
            status: head.status,
            headers: head.headers,
            body: kept.freeze(),
        })
    }
}

/// Refuses URLs an attempt must not send to before any connection
/// ([`check_endpoint_url`] under its `policy`).
fn check_url(url: &http::Uri, policy: &NetworkPolicy) -> Result<(), Failure> {
    check_endpoint_url(url, policy).map_err(|refused| match refused {
        UrlRefused::Blocked {
            host,
            addr,
            reason,
            from,
        } => Failure::Blocked {
            host,
            addr: Some(addr),
            reason,
            from,
        },
        other => Failure::Protocol(other.to_string()),
    })
}

/// Why an endpoint URL is refused before any connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    /// An `http://` URL while `allow_http` is off (in the table named).
    #[error("http:// endpoints are refused; use https, or set {0}.allow_http = true")]
    Http(String),
    /// Neither `https://` nor `http://` (the URL, redacted).
    #[error("`{0}` is not an https:// URL")]
    Scheme(String),
    /// No host (the URL, redacted).
    #[error("`{0}` has no host")]
    NoHost(String),
    /// An IP literal that is not public while `allow_private_networks` is
    /// off (in the table named).
    #[error(
        "{}; set {from}.allow_private_networks = true to allow it",
        blocked_message(host, Some(addr), reason)
    )]
    Blocked {
        /// The host of the URL.
        host: String,
        /// The address it names.
        addr: IpAddr,
        /// What kind of address it is (`loopback`, `private`, …).
        reason: &'static str,
        /// The table of the policy that refused it.
        from: String,
    },
}

/// The endpoint URL rule, the one the config file's and the API's checks
/// and the delivery client apply alike: `https://` (or `http://` when the
/// policy allows it), a host, and unless the policy allows private networks
/// no IP literal that is not public (hyper dials those without asking the
/// resolver; host names are checked again after DNS by the resolver).
pub fn check_endpoint_url(url: &http::Uri, policy: &NetworkPolicy) -> Result<(), UrlRefused> {
    match url.scheme_str() {
        Some("https") => {}
        Some("http") if policy.allow_http => {}
        Some("http") => return Err(UrlRefused::Http(policy.from.clone())),
        _ => return Err(UrlRefused::Scheme(crate::model::redact_url(&url.to_string()))),
    }
    let host = url
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| UrlRefused::NoHost(crate::model::redact_url(&url.to_string())))?;
    if policy.allow_private_networks {
        return Ok(());
    }
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(addr) = literal.parse::<IpAddr>() {
        if let Some(reason) = non_public_reason(addr) {
            return Err(UrlRefused::Blocked {
                host: host.to_string(),
                addr,
                reason,
                from: policy.from.clone(),
            });
        }
    }
    Ok(())
}

fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), Error> {
    let added = read_ca_file(roots, path).map_err(|problem| Error::CaFile {
        path: path.to_owned(),
        problem,
    })?;
    tracing::debug!(path = %path.display(), added, "extra CA certificates trusted");
    Ok(())
}

/// Adds the certificates of the PEM file `path` to `roots` and says how
/// many: the one reader of CA files (`delivery.ca_file`,
/// `history.postgres_ca_file` and the config's check of it). The problem
/// says what is wrong with the file: unreadable, not PEM, a certificate
/// unusable as a trust anchor, or no certificate at all.
pub fn read_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<usize, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("certificate #{} is unusable: {e}", added + 1))?;
        added += 1;
    }
    if added == 0 {
        return Err("it holds no `BEGIN CERTIFICATE` block".into());
    }
    Ok(added)
}

/// The DNS resolver of the delivery connector: resolves with the system
/// resolver, then drops every non-public address unless private networks
/// are allowed. The connector dials only what this returns.
#[derive(Clone, Debug)]
struct GuardedResolver {
    /// `delivery.allow_private_networks`: return every address.
    allow_private_networks: bool,
}

/// The resolver's refusal: a host whose every address is non-public.
/// Found again in the error chain by [`classify`].
#[derive(Debug, Clone)]
struct BlockedAddress {
    host: String,
    addr: IpAddr,
    reason: &'static str,
}

impl fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&blocked_message(&self.host, Some(&self.addr), self.reason))
    }
}

/// "`host` resolves to `addr`, a `reason` address" (without the address
/// when it is not to be revealed), or for an IP literal "`addr` is a
/// `reason` address".
fn blocked_message(host: &str, addr: Option<&IpAddr>, reason: &str) -> String {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match addr {
        _ if literal.parse::<IpAddr>().is_ok() => format!("{host} is a {reason} address"),
        Some(addr) => format!("{host} resolves to {addr}, a {reason} address"),
        None => format!("{host} resolves to a {reason} address"),
    }
}

impl StdError for BlockedAddress {}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, Box<dyn StdError + Send + Sync>>> + Send>>;

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private_networks = self.allow_private_networks;
        Box::pin(async move {
            let host = name.as_str();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {host}: {e}")))?
                .collect();
            if allow_private_networks {
                return Ok(addrs.into_iter());
            }
            let mut refused = None;
            let public: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match non_public_reason(a.ip()) {
                    None => true,
                    Some(reason) => {
                        refused.get_or_insert((a.ip(), reason));
                        false
                    }
                })
                .collect();
            match (public.is_empty(), refused) {
                (true, Some((addr, reason))) => Err(Box::new(BlockedAddress {
                    host: host.to_string(),
                    addr,
                    reason,
                }) as _),
                (false, Some((addr, reason))) => {
                    tracing::debug!(host, %addr, reason, "skipping non-public addresses of the host");
                    Ok(public.into_iter())
                }
                (_, None) => Ok(public.into_iter()),
            }
        })
    }
}

/// The next cause of `e`. An `io::Error` is looked into with `get_ref`,
/// because its `source()` skips the error it wraps (hyper-rustls and
/// tokio-rustls wrap the rustls error in one or two of them).
fn cause<'e>(e: &'e (dyn StdError + 'static)) -> Option<&'e (dyn StdError + 'static)> {
    match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
        Some(inner) => Some(inner),
        None => e.source(),
    }
}

/// Maps hyper's error to a [`Failure`], by walking its causes.
fn classify(error: &hyper_util::client::legacy::Error) -> Failure {
    let message = describe(error);
    let mut broken = false;
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(blocked) = e.downcast_ref::<BlockedAddress>() {
            return Failure::Blocked {
                host: blocked.host.clone(),
                addr: Some(blocked.addr),
                reason: blocked.reason,
                from: String::new(),
            };
        }
        if e.is::<rustls::Error>() {
            return Failure::Tls(message);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            broken |= matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            broken |= hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled();
        }
        next = cause(e);
    }
    if error.is_connect() || broken {
        Failure::Connect(message)
    } else {
        Failure::Protocol(message)
    }
}

/// The error and its causes on one line, without hyper's generic top line
/// ("client error (Connect)") when there is something more specific. The
/// API client ([`crate::api::client`]) says its errors the same way.
pub(crate) fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = cause(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = cause(e);
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}

/// Whether an address is publicly routable, so that deliveries may reach it
/// while `delivery.allow_private_networks` is off.
pub fn is_public(ip: IpAddr) -> bool {
    non_public_reason(ip).is_none()
}

/// What kind of non-public address `ip` is (`loopback`, `private`, …), or
/// `None` if it is public.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (10, _, _) => "private",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local",
        (172, 16..=31, _) => "private",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay",
        (192, 168, _) => "private",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        _ if ip == Ipv4Addr::BROADCAST => "broadcast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) reach the
    // IPv4 address they carry: judge that.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(embedded(s[6], s[7]));
    }
    if s[..6] == [0; 6] {
        return Some("IPv4-compatible (deprecated)");
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some("local-use NAT64");
    }
    if s[0] & 0xfe00 == 0xfc00 {
        return Some("unique local (private)");
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return Some("link-local");
    }
    if s[0] & 0xffc0 == 0xfec0 {
        return Some("site-local (deprecated)");
    }
    if s[0] & 0xff00 == 0xff00 {
        return Some("multicast");
    }
    // Only 2000::/3 is global unicast.
    if s[0] & 0xe000 != 0x2000 {
        return Some("reserved");
    }
    if s[0] == 0x2001 && s[1] == 0x0db8 || s[0] == 0x3fff && s[1] & 0xf000 == 0 {
        return Some("documentation");
    }
    if s[0] == 0x2001 && s[1] < 0x0200 {
        return Some("IETF protocol assignment (Teredo, benchmarking, …)");
    }
    if s[0] == 0x2002 {
        // 6to4: the IPv4 address is in bits 16..48.
        return v4_reason(embedded(s[1], s[2]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classification() {
        let cases: &[(&str, bool)] = &[
            // IPv4 public
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("93.184.216.34", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("192.169.0.1", true),
            ("198.17.255.255", true),
            ("198.20.0.0", true),
            ("223.255.255.255", true),
            // IPv4 not public
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("10.255.255.255", false),
            ("100.64.0.1", false),
            ("100.127.255.254", false),
            ("127.0.0.1", false),
            ("127.255.0.9", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            // IPv6 public
            ("2606:4700:4700::1111", true),
            ("2001:4860:4860::8888", true),
            ("2a00:1450:4001:80b::200e", true),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::808:808", true),
            ("2002:808:808::1", true),
            // IPv6 not public
            ("::", false),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::127.0.0.1", false),
            ("::8.8.8.8", false),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::a00:1", false),
            ("64:ff9b:1::1", false),
            ("2002:7f00:1::1", false),
            ("2002:c0a8:101::1", false),
            ("fc00::1", false),
            ("fd12:3456:789a::1", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("100::1", false),
            ("2001:db8::1", false),
            ("3fff::1", false),
            ("2001::1", false),
            ("2001:2::1", false),
            ("5f00::1", false),
            ("4000::1", false),
        ];
        for (text, public) in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(is_public(ip), *public, "{text}: {:?}", non_public_reason(ip));
        }
    }

    #[test]
    fn reasons_name_the_range() {
        let reason = |s: &str| non_public_reason(s.parse().unwrap());
        assert_eq!(reason("127.0.0.1"), Some("loopback"));
        assert_eq!(reason("10.1.2.3"), Some("private"));
        assert_eq!(reason("::ffff:192.168.0.1"), Some("private"));
        assert_eq!(reason("169.254.169.254"), Some("link-local"));
        assert_eq!(reason("fd00::1"), Some("unique local (private)"));
    }

    #[test]
    fn failure_kinds_and_retryability() {
        let blocked = Failure::Blocked {
            host: "internal.example".into(),
            addr: Some("10.0.0.1".parse().unwrap()),
            reason: "private",
            from: "delivery".into(),
        };
        assert_eq!(blocked.kind(), "blocked");
        assert!(!blocked.is_retryable());
        assert_eq!(
            blocked.to_string(),
            "internal.example resolves to 10.0.0.1, a private address; set delivery.allow_private_networks = true to allow it"
        );
        let literal = Failure::Blocked {
            host: "[::1]".into(),
            addr: Some("::1".parse().unwrap()),
            reason: "loopback",
            from: "delivery".into(),
        };
        assert_eq!(
            literal.to_string(),
            "[::1] is a loopback address; set delivery.allow_private_networks = true to allow it"
        );
        // A tenant's: its plan's key, and not the address its host resolved to.
        let hidden = Failure::Blocked {
            host: "internal.example".into(),
            addr: None,
            reason: "private",
            from: "plans.free".into(),
        };
        assert_eq!(
            hidden.to_string(),
            "internal.example resolves to a private address; set plans.free.allow_private_networks = true to allow it"
        );
        for (failure, kind) in [
            (
                Failure::Timeout {
                    after: Duration::from_secs(1),
                },
                "timeout",
            ),
            (Failure::Connect("refused".into()), "connect"),
            (Failure::Tls("unknown issuer".into()), "tls"),
            (Failure::Protocol("bad response".into()), "protocol"),
        ] {
            assert_eq!(failure.kind(), kind);
            assert!(failure.is_retryable(), "{kind}");
        }
    }
}
