//! The web console and the tenant portal, at `/console` on the API
//! listener: HTML rendered on the server, no script at all.
//!
//! - **Two ways in.** An operator signs in with an admin key (a tenant key
//!   opens its tenant's portal the same way); a tenant arrives through a
//!   one-time link made by `POST /v1/tenants/{id}/portal`. Either starts a
//!   [`session::Session`] kept in the catalogue store, so any process of
//!   the deployment serves it.
//! - **The API's own authorization.** A page reads and acts through the
//!   API's routes, called in process ([`Api::call`]) as the session's
//!   [`Principal`]: a tenant's portal sees exactly what a tenant key would,
//!   and an operator page what an admin key would. The console holds no
//!   rule of its own about who may see what.
//! - **Safe by default.** The session cookie is `HttpOnly`,
//!   `SameSite=Strict`, and `Secure` behind `https://`; every form that
//!   changes something carries the session's CSRF token, and a request
//!   from another origin is refused; the Content-Security-Policy allows no
//!   script and no inline style; pages are `no-store`; secrets appear only
//!   on the answer of an explicit reveal.
//! - **Bounded pages.** Lists read one page of an indexed API route (the
//!   log's cursor pagination), never the whole log.
//!
//! Pages live in [`pages`]; the frame and the shared pieces of HTML in
//! [`view`].

// A handler's early answer is the page to show (an error, a redirect to
// sign in): boxing every `Result<_, Response>` would buy nothing.
#![allow(clippy::result_large_err)]

pub mod pages;
pub mod session;
pub mod view;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Router;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use maud::Markup;
use serde::de::DeserializeOwned;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tower::ServiceExt as _;

use crate::api::ApiState;
use crate::catalog::keys::Principal;
use session::{Role, Session, Sessions, Via};

/// Largest API answer a page reads.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The stylesheet, embedded in the binary.
const CSS: &str = include_str!("assets/console.css");

/// A principal the console vouches for: put on the requests it makes to
/// the API in process ([`Api::call`]), which a request from the network
/// can never carry (extensions are not headers).
#[derive(Clone, Debug)]
pub struct Vouched(pub Principal);

/// The API's routes, called in process as a session's principal.
#[derive(Clone)]
pub struct Api {
    /// `/v1/…` and the rest of the API, without the console.
    router: Router,
}

/// What an API call answered.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its JSON body (null if it had none).
    pub body: Value,
}

impl Answer {
    /// Whether it is a 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The API's error message, or the status.
    pub fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the API answered {}", self.status))
    }

    /// The body as `T`, or a page saying why not.
    pub fn into<T: DeserializeOwned>(self) -> Result<T, Response> {
        if !self.ok() {
            return Err(view::failure(self.status, &self.message()));
        }
        serde_json::from_value(self.body).map_err(|e| {
            view::failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the API's answer was not what the console expects: {e}"),
            )
        })
    }
}

impl Api {
    /// Calls `method path` with `body` (JSON) as `principal`.
    pub async fn call(&self, principal: &Principal, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call_from(principal, None, method, path, body, &HeaderMap::new(), &Uri::default())
            .await
    }

    /// As [`Api::call`], passing on the host the browser asked for (its
    /// `Host`, or HTTP/2's `:authority` from `browser_uri`) and its
    /// `X-Forwarded-Proto` from `browser` (for answers holding links), and
    /// how the session calling signed in (`via`), for what it makes to end
    /// with that key.
    #[allow(clippy::too_many_arguments)]
    pub async fn call_from(
        &self,
        principal: &Principal,
        via: Option<&Option<Via>>,
        method: Method,
        path: &str,
        body: Option<Value>,
        browser: &HeaderMap,
        browser_uri: &Uri,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(host) = crate::api::hosts::request_host(browser, browser_uri) {
            request = request.header(header::HOST, host);
        }
        if let Some(value) = browser.get("x-forwarded-proto") {
            request = request.header("x-forwarded-proto", value);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map(|b| Body::from(b.to_string())).unwrap_or_else(Body::empty);
        let mut request = match request.body(body) {
            Ok(request) => request,
            Err(e) => return Answer::failed(format!("a bad API path `{path}`: {e}")),
        };
        request.extensions_mut().insert(Vouched(principal.clone()));
        if let Some(via) = via {
            request.extensions_mut().insert(session::SignedInVia(via.clone()));
        }
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(e) => match e {},
        };
        let status = response.status();
        match axum::body::to_bytes(response.into_body(), MAX_ANSWER).await {
            Ok(bytes) if bytes.is_empty() => Answer {
                status,
                body: Value::Null,
            },
            Ok(bytes) => Answer {
                status,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            },
            Err(e) => Answer::failed(format!("reading the API's answer to {path}: {e}")),
        }
    }

    /// `GET path` as `principal`, read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, principal: &Principal, path: &str) -> Result<T, Response> {
        self.call(principal, Method::GET, path, None).await.into()
    }
}

impl Answer {
    fn failed(message: String) -> Answer {
        Answer {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: serde_json::json!({"error": {"code": "console", "message": message}}),
        }
    }
}

/// What the console's handlers share.
#[derive(Clone)]
pub struct Console {
    /// The API, called in process.
    pub api: Api,
    /// Sessions and links.
    pub sessions: Sessions,
    /// The API's state: its keys, for signing in.
    pub state: Arc<ApiState>,
    /// Whether cookies are `Secure` (the console is reached over https).
    pub secure: bool,
}

impl Console {
    /// Whether `tenant` exists in `generation` (not deleted, nor made again
    /// since), reading the catalogue store again if this process has not
    /// heard of it yet (a link made on another process a moment ago).
    pub async fn tenant_exists(&self, tenant: &crate::model::TenantId, generation: &str) -> bool {
        let catalog = &self.state.catalog;
        let exists = || {
            catalog
                .snapshot()
                .tenants
                .get(tenant)
                .is_some_and(|(t, _)| t.generation == generation)
        };
        if exists() {
            return true;
        }
        if let Err(e) = catalog.refresh().await {
            tracing::warn!(error = %e, "cannot refresh the catalogue");
        }
        exists()
    }

    /// A form's action: checks its CSRF token, then calls `method path`
    /// with `body` as the session's principal. A refused form or a failed
    /// call is the page to show instead.
    pub async fn act(
        &self,
        ctx: &Ctx,
        form: &Fields,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, Response> {
        ctx.check(form)?;
        let answer = self.api.call(&ctx.principal, method, path, body).await;
        if answer.ok() {
            Ok(answer)
        } else {
            Err(view::failure(answer.status, &answer.message()))
        }
    }
}

/// The console's routes, for [`crate::api::router`] to merge; `api` is the
/// API's router without them.
pub fn routes(state: Arc<ApiState>, api: Router) -> Router {
    let console = Console {
        api: Api { router: api },
        sessions: Sessions::new(state.catalog.store(), &state.console),
        secure: state
            .console
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
            || state.catalog.snapshot().config.server.tls_cert.is_some(),
        state,
    };
    pages::routes()
        .route("/console/assets/console.css", axum::routing::get(stylesheet))
        .layer(middleware::from_fn(guard))
        .with_state(console)
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// The Content-Security-Policy of every console answer: nothing but the
/// console's own stylesheet and forms; no script, no frames.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// Refuses state-changing requests from another origin (the API's own
/// rule, [`crate::api::hosts::same_origin`]), and puts the security
/// headers on every answer.
async fn guard(request: Request, next: Next) -> Response {
    if !crate::api::hosts::same_origin(request.method(), request.headers(), request.uri()) {
        return view::failure(
            StatusCode::FORBIDDEN,
            "this request came from another site: the console only takes forms of its own pages",
        );
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A signed-in request: its session and whom it acts as. Extracting it
/// from a request without a live session sends the browser to sign in.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The session.
    pub session: Session,
    /// Its cookie's token.
    pub token: String,
    /// The API principal it acts as.
    pub principal: Principal,
}

impl Ctx {
    /// Whether the session is the operator's.
    pub fn operator(&self) -> bool {
        self.session.role == Role::Operator
    }

    /// Refuses a form without this session's CSRF token.
    pub fn check(&self, form: &Fields) -> Result<(), Response> {
        let given = form.get("csrf").unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(self.session.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(view::failure(
                StatusCode::FORBIDDEN,
                "this form has no valid CSRF token: reload the page and try again",
            ))
        }
    }
}

impl FromRequestParts<Console> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Ctx, Response> {
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(token) = jar.get(session::COOKIE).map(|c| c.value().to_owned()) else {
            return Err(Redirect::to("/console/sign-in").into_response());
        };
        let session = match console.sessions.get(&token).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(Redirect::to("/console/sign-in?ended=1").into_response()),
            Err(e) => return Err(view::failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())),
        };
        if !still_valid(console, &session).await {
            let _ = console.sessions.end(&token).await;
            return Err(Redirect::to("/console/sign-in?ended=1").into_response());
        }
        Ok(Ctx {
            principal: session.role.principal(),
            session,
            token,
        })
    }
}

/// Whether a session may go on: its tenant still exists, the key it
/// signed in with is neither revoked nor gone from `server.api_keys`, and
/// a session of an open API ends once the API has keys.
async fn still_valid(console: &Console, session: &Session) -> bool {
    if let Role::Tenant { tenant, generation } = &session.role {
        if !console.tenant_exists(tenant, generation).await {
            return false;
        }
    }
    match &session.via {
        Some(via) => via_still_valid(console, via),
        // Signed in to an open API: only while it stays open.
        None => console.state.open(),
    }
}

/// Whether the key `via` names still lets its holder in: a stored key not
/// revoked, a config key still in `server.api_keys`, and for a link, the
/// key of the admin who made it.
pub(crate) fn via_still_valid(console: &Console, via: &Via) -> bool {
    match via {
        Via::Key { id } => console.state.catalog.snapshot().keys.contains_key(id),
        Via::ConfigKey { hash } => console.state.has_config_key_hash(hash),
        Via::Link { by: Some(by) } => via_still_valid(console, by),
        // Made on an open API (or by an older hookd): the link's time.
        Via::Link { by: None } => true,
    }
}

/// The fields of a submitted form, in order (a name may repeat).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed; `None` if absent or blank.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// The session cookie for `token`, living `max_age`.
pub fn session_cookie(console: &Console, token: String, max_age: cookie::time::Duration) -> Cookie<'static> {
    Cookie::build((session::COOKIE, token))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(console.secure)
        .max_age(max_age)
        .build()
}

/// A page: the frame around `body`, for a signed-in session.
pub fn render(ctx: &Ctx, title: &str, body: Markup) -> Response {
    view::page(Some(ctx), title, None, body).into_response()
}
