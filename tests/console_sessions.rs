//! Console sessions over plain HTTP: shared by every process of a Redis
//! deployment, ended with the key they signed in with, one-time links
//! spent once, cross-site posts refused, and the security headers on
//! every page. (What a browser does with them is in `tests/console.rs`.)

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::daemon::Hookd;
use support::RedisServer;

const ADMIN: &str = "sessions-admin-key";

fn config(queue: &str) -> hookd::config::Config {
    hookd::config::Config::from_toml(&format!(
        "[server]\napi_keys = [\"{ADMIN}\"]\n[queue]\n{queue}\npoll_interval = \"20ms\"\n"
    ))
    .unwrap()
}

/// What one request answered.
struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

impl Answer {
    /// The session cookie it set, as `name=value`.
    fn cookie(&self) -> String {
        let set = self
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with("hookd_session="))
            .unwrap_or_else(|| panic!("no session cookie set ({}): {:?}", self.status, self.headers));
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(set.contains(flag), "{set}");
        }
        set.split(';').next().unwrap().to_owned()
    }

    fn location(&self) -> &str {
        self.headers.get("location").map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

/// One request to `url`, from a browser at `origin` holding `cookie`.
async fn request(method: Method, url: &str, cookie: Option<&str>, form: Option<&str>, origin: Option<&str>) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let body = Full::new(Bytes::from(form.unwrap_or("").to_owned()));
    let response = client.request(req.body(body).unwrap()).await.expect("hookd answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Signs in at `base`'s console with `key`, from its own origin; the
/// session cookie.
async fn sign_in(base: &str, key: &str) -> String {
    let signed = request(
        Method::POST,
        &format!("{base}/console/sign-in"),
        None,
        Some(&format!("key={key}")),
        Some(base),
    )
    .await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    signed.cookie()
}

/// Opens a one-time link as a browser would (its button posts it).
async fn open_link(url: &str, origin: &str) -> Answer {
    let landing = request(Method::GET, url, None, None, None).await;
    assert_eq!(landing.status, StatusCode::OK, "{}", landing.body);
    request(Method::POST, url, None, Some(""), Some(origin)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_shared_by_the_processes_of_one_redis() {
    let redis = RedisServer::start();
    let queue = format!("redis_url = \"{}\"\nkey_prefix = \"console_sessions\"", redis.url());
    let a = Hookd::start(config(&queue)).await;
    let b = Hookd::start(config(&queue)).await;
    a.api
        .post("/v1/tenants", json!({"id": "acme", "name": "Acme"}).to_string())
        .await
        .unwrap();
    // Made on a, opened on b, used on a.
    let link = a.api.post("/v1/tenants/acme/portal", "").await.unwrap();
    let url = link["url"].as_str().unwrap().replace(&a.url, &b.url);
    let opened = open_link(&url, &b.url).await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER);
    assert_eq!(opened.location(), "/console");
    let cookie = opened.cookie();
    let page = request(
        Method::GET,
        &format!("{}/console/subscriptions", a.url),
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Tenant <strong>acme</strong>"), "{}", page.body);
    // Spent: neither process opens it again.
    for base in [&a.url, &b.url] {
        let again = request(Method::POST, &url.replace(&b.url, base), None, Some(""), Some(base)).await;
        assert_eq!(again.status, StatusCode::GONE);
    }
    // Signing out on b ends it on a.
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field");
    let out = request(
        Method::POST,
        &format!("{}/console/sign-out", b.url),
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
        Some(&b.url),
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let after = request(Method::GET, &format!("{}/console", a.url), Some(&cookie), None, None).await;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert!(after.location().starts_with("/console/sign-in"), "{}", after.location());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_with_its_key_and_refuses_other_sites() {
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(config(&format!("data_dir = {:?}", dir.path().display().to_string()))).await;
    let base = hookd.url.clone();
    hookd
        .api
        .post("/v1/tenants", json!({"id": "acme", "name": "Acme"}).to_string())
        .await
        .unwrap();
    let key = hookd
        .api
        .post("/v1/tenants/acme/keys", json!({"label": "console"}).to_string())
        .await
        .unwrap();
    let (key_id, secret) = (key["id"].as_str().unwrap(), key["key"].as_str().unwrap());

    // A tenant key signs in to its portal; security headers on every page.
    let cookie = sign_in(&base, secret).await;
    let page = request(Method::GET, &format!("{base}/console"), Some(&cookie), None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.headers.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page.headers.get("x-frame-options").unwrap(), "DENY");
    assert_eq!(page.headers.get("cache-control").unwrap(), "no-store");
    assert!(!page.body.contains("<script"), "no script at all");

    // A form posted from another site is refused, token or not.
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let forged = request(
        Method::POST,
        &format!("{base}/console/sign-out"),
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
        Some("http://evil.example"),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let still = request(Method::GET, &format!("{base}/console"), Some(&cookie), None, None).await;
    assert_eq!(still.status, StatusCode::OK, "the forged sign-out did nothing");

    // Revoking the key ends the session (the catalogue follows within a second).
    hookd
        .api
        .delete(&format!("/v1/tenants/acme/keys/{key_id}"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let page = request(Method::GET, &format!("{base}/console"), Some(&cookie), None, None).await;
        if page.status == StatusCode::SEE_OTHER {
            assert_eq!(page.location(), "/console/sign-in?ended=1");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session outlived its revoked key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A producer key does not sign in; an admin key does, as the operator.
    let producer = hookd
        .api
        .post("/v1/tenants/acme/keys", json!({"role": "producer"}).to_string())
        .await
        .unwrap();
    let refused = request(
        Method::POST,
        &format!("{base}/console/sign-in"),
        None,
        Some(&format!("key={}", producer["key"].as_str().unwrap())),
        Some(&base),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        refused.body.contains("producer keys only send events"),
        "{}",
        refused.body
    );
    let admin = sign_in(&base, ADMIN).await;
    let page = request(
        Method::GET,
        &format!("{base}/console/tenants"),
        Some(&admin),
        None,
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(">Operator<"), "{}", page.body);
    hookd.stop().await;
}

/// A session opened from a one-time link lives while the admin key that
/// made the link does: removing that key from `server.api_keys` ends it
/// (and a link it made but nobody opened yet no longer opens), while a
/// link made with another key goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_session_ends_with_the_key_that_made_the_link() {
    const LEAVING: &str = "leaving-admin-key-1";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookd.toml");
    let file = |keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        format!(
            "[server]\napi_keys = [{}]\n[queue]\ndata_dir = {:?}\npoll_interval = \"20ms\"\n",
            keys.join(", "),
            dir.path().join("data").display().to_string()
        )
    };
    std::fs::write(&path, file(&[ADMIN, LEAVING])).unwrap();
    let hookd = Hookd::start(hookd::config::Config::load(Some(&path)).unwrap()).await;
    let base = hookd.url.clone();
    hookd
        .api
        .post("/v1/tenants", json!({"id": "acme", "name": "Acme"}).to_string())
        .await
        .unwrap();
    let leaving = hookd.api.with_key(LEAVING.to_owned());
    let link = |client: hookd::api::client::ApiClient| async move {
        let made = client.post("/v1/tenants/acme/portal", "{}".to_owned()).await.unwrap();
        made["url"].as_str().unwrap().to_owned()
    };
    let opened = |url: String| {
        let base = base.clone();
        async move {
            let answer = open_link(&url, &base).await;
            assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
            answer.cookie()
        }
    };
    let by_leaving = opened(link(leaving.clone()).await).await;
    let by_staying = opened(link(hookd.api.clone()).await).await;
    let unopened = link(leaving.clone()).await;
    let portal = |cookie: String| {
        let url = format!("{base}/console");
        async move { request(Method::GET, &url, Some(&cookie), None, None).await }
    };
    assert_eq!(portal(by_leaving.clone()).await.status, StatusCode::OK);

    std::fs::write(&path, file(&[ADMIN])).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = portal(by_leaving.clone()).await;
        if page.status == StatusCode::SEE_OTHER {
            assert_eq!(page.location(), "/console/sign-in?ended=1");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the link's session outlived the key that made it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        portal(by_staying).await.status,
        StatusCode::OK,
        "a link made with a key still in server.api_keys goes on"
    );
    let landing = request(Method::GET, &unopened, None, None, None).await;
    let spent = request(Method::POST, &unopened, None, Some(""), Some(&base)).await;
    assert_eq!(landing.status, StatusCode::OK);
    assert_eq!(spent.status, StatusCode::GONE, "{}", spent.body);
    hookd.stop().await;
}

/// Operators list the console's sessions and end one: it is signed out at
/// its next page, the others go on, and only an admin may do either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_and_end_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(config(&format!("data_dir = {:?}", dir.path().display().to_string()))).await;
    let base = hookd.url.clone();
    hookd
        .api
        .post("/v1/tenants", json!({"id": "acme", "name": "Acme"}).to_string())
        .await
        .unwrap();
    let key = hookd
        .api
        .post("/v1/tenants/acme/keys", json!({"label": "console"}).to_string())
        .await
        .unwrap();
    let (key_id, secret) = (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    );
    let tenant = sign_in(&base, &secret).await;
    let operator = sign_in(&base, ADMIN).await;
    let listed = hookd.api.get("/v1/console/sessions").await.unwrap();
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{listed}");
    let of_acme: Vec<&serde_json::Value> = sessions.iter().filter(|s| s["tenant"] == "acme").collect();
    assert_eq!(of_acme.len(), 1, "{listed}");
    assert_eq!(of_acme[0]["role"], "tenant");
    assert_eq!(of_acme[0]["via"], json!({"kind": "key", "key_id": key_id}));
    let text = listed.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("csrf"),
        "no key, token or CSRF: {text}"
    );
    let only = hookd.api.get("/v1/console/sessions?tenant=acme").await.unwrap();
    assert_eq!(only["sessions"].as_array().unwrap().len(), 1);
    // A tenant's key may do neither.
    let as_tenant = hookd.api.with_key(secret.clone());
    assert_eq!(
        hookd::api::client::ApiClient::status_of(&as_tenant.get("/v1/console/sessions").await),
        Some(403)
    );
    let id = of_acme[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        hookd::api::client::ApiClient::status_of(&as_tenant.delete(&format!("/v1/console/sessions/{id}")).await),
        Some(403)
    );

    hookd.api.delete(&format!("/v1/console/sessions/{id}")).await.unwrap();
    let page = request(Method::GET, &format!("{base}/console"), Some(&tenant), None, None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "the ended session is signed out");
    assert!(page.location().starts_with("/console/sign-in"), "{}", page.location());
    let page = request(Method::GET, &format!("{base}/console"), Some(&operator), None, None).await;
    assert_eq!(page.status, StatusCode::OK, "the other goes on");
    assert_eq!(
        hookd::api::client::ApiClient::status_of(&hookd.api.delete(&format!("/v1/console/sessions/{id}")).await),
        Some(404),
        "already ended"
    );
    // The console lists them too, with a button that ends them.
    let page = request(
        Method::GET,
        &format!("{base}/console/sessions"),
        Some(&operator),
        None,
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("a server.api_keys key") && page.body.contains(">End<"),
        "{}",
        page.body
    );
    hookd.stop().await;
}
