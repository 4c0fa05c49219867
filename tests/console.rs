//! The web console and tenant portal, driven in a real headless Chromium
//! through WebDriver against a running hookd with real receivers that
//! verify every signature: an operator signs in and makes a tenant and a
//! portal link; the tenant's portal makes a subscription, sends a test
//! event and watches it arrive, sees a failed delivery and retries it once
//! the receiver recovers; a second tenant's portal sees none of it; form
//! errors show beside their fields; posts without the CSRF token are
//! refused. A failing test leaves a screenshot (see `support::browser`).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, Locator};
use hookd::config::Config;
use serde_json::json;
use support::browser::{click, fill, find, main_text, path, post_without_csrf, shot, wait_for_text, Browser};
use support::daemon::Hookd;
use support::receiver::{Answer, Receiver};

const ADMIN: &str = "console-admin-key";

/// hookd with an admin key, the embedded store and a catalogue, whose
/// retries wait long enough that only a person's "Retry now" sends them.
fn config(dir: &Path) -> Config {
    Config::from_toml(&format!(
        r#"
[server]
api_keys = ["{ADMIN}"]
[queue]
data_dir = {dir:?}
poll_interval = "20ms"
[plans.default]
allow_http = true
allow_private_networks = true
[delivery]
allow_http = true
allow_private_networks = true
backoff_initial = "30m"
backoff_max = "1h"
[plans.free]
max_subscriptions = 5

[plugins]
cache_dir = {cache:?}
deadline = "5s"
[plugins.registry.jq]
path = {jq:?}
description = "jq: reshape or filter with one jq program"

[[event_types]]
name = "coupon.redeemed"
description = "A customer redeemed a coupon."
example = {{ coupon = "SPRING10", amount = 25 }}
schema = {{ type = "object", required = ["coupon"] }}
"#,
        dir = dir.display().to_string(),
        cache = support::plugins::shared_cache().display().to_string(),
        jq = support::plugins::wasm("jq").display().to_string(),
    ))
    .unwrap()
}

/// Signs in at `/console` with `key`.
async fn sign_in(c: &Client, base: &str, key: &str) {
    c.goto(&format!("{base}/console")).await.unwrap();
    assert_eq!(
        path(c).await,
        "/console/sign-in",
        "a browser without a session is sent to sign in"
    );
    fill(c, "key", key).await;
    click(c, "Sign in").await;
}

/// Opens a portal link and its one button.
async fn open_portal(c: &Client, url: &str) {
    c.goto(url).await.unwrap();
    click(c, "Open the portal").await;
    find(c, "header .who").await;
}

/// Signs out through the header's button.
async fn sign_out(c: &Client) {
    click(c, "Sign out").await;
    assert_eq!(path(c).await, "/console/sign-in");
}

/// Creates a subscription through the portal's form and returns its id
/// and the secret the page showed once.
async fn create_subscription(c: &Client, base: &str, name: &str, url: &str) -> (String, String) {
    c.goto(&format!("{base}/console/subscriptions/new")).await.unwrap();
    fill(c, "name", name).await;
    fill(c, "url", url).await;
    fill(c, "events", "coupon.*").await;
    fill(c, "headers", "x-team: coupons").await;
    click(c, "Create").await;
    let secret = find(c, "[data-secret]").await.text().await.unwrap();
    assert!(secret.starts_with("whsec_"), "the new secret is shown: {secret}");
    click(c, &format!("Go to {name}")).await;
    let id = path(c).await.rsplit('/').next().unwrap().to_owned();
    assert!(id.starts_with("sub_"), "{id}");
    (id, secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_tenant_portals_in_a_real_browser() {
    let recovered = Arc::new(AtomicBool::new(false));
    let flag = recovered.clone();
    let rx = Receiver::start_with(move |path, _, _| {
        if path == "flaky" && !flag.load(Ordering::SeqCst) {
            Answer::Status(500, vec![])
        } else {
            Answer::ok()
        }
    })
    .await;
    let rx = Arc::new(rx);
    let dir = tempfile::tempdir().unwrap();
    let hookd = Hookd::start(config(dir.path())).await;
    let base = hookd.url.clone();
    let admin = hookd.api.clone();

    Browser::run("operator_and_tenant_portals", move |c| async move {
        // A wrong key is refused beside its field; the admin key signs in.
        sign_in(&c, &base, "not-a-key").await;
        let error = find(&c, ".field-error[data-field='key']").await.text().await.unwrap();
        assert!(error.contains("not valid"), "{error}");
        fill(&c, "key", ADMIN).await;
        click(&c, "Sign in").await;
        assert_eq!(path(&c).await, "/console");
        assert!(
            main_text(&c).await.contains("Queue"),
            "the operator's overview shows the queue"
        );

        // A registered plugin, run on an event as `hookd plugin run` does.
        c.goto(&format!("{base}/console/plugins")).await.unwrap();
        fill(&c, "config", "filter={code: .data.coupon, cents: (.data.amount * 100)}").await;
        click(&c, "Run").await;
        assert_eq!(
            find(&c, "#plugin-run h2").await.text().await.unwrap(),
            "Verdict: deliver"
        );
        let after: serde_json::Value =
            serde_json::from_str(&find(&c, "#body-after").await.text().await.unwrap()).unwrap();
        assert_eq!(after, json!({"code": "SPRING10", "cents": 2500}));
        assert!(find(&c, "#body-before")
            .await
            .text()
            .await
            .unwrap()
            .contains("\"amount\":25"));
        shot(&c, "plugins").await;

        // The session cookie is HttpOnly and SameSite=Strict.
        let cookie = c.get_named_cookie("hookd_session").await.unwrap();
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(cookie::SameSite::Strict));

        // The operator makes tenants: a bad id is an error beside `id`.
        c.goto(&format!("{base}/console/tenants")).await.unwrap();
        fill(&c, "id", "Not An Id").await;
        fill(&c, "name", "Nobody").await;
        click(&c, "Create tenant").await;
        let error = find(&c, ".field-error[data-field='id']").await.text().await.unwrap();
        assert!(error.starts_with("id:"), "{error}");
        assert_eq!(
            find(&c, "#f-name").await.prop("value").await.unwrap().as_deref(),
            Some("Nobody"),
            "what was typed stays"
        );
        for (id, name) in [("acme", "Acme Inc."), ("globex", "Globex")] {
            c.goto(&format!("{base}/console/tenants")).await.unwrap();
            fill(&c, "id", id).await;
            fill(&c, "name", name).await;
            fill(&c, "plan", "free").await;
            click(&c, "Create tenant").await;
            assert!(main_text(&c).await.contains("Tenant created."));
        }
        shot(&c, "tenants").await;
        c.goto(&format!("{base}/console/tenants/acme")).await.unwrap();
        click(&c, "Make a portal link").await;
        let link = find(&c, "#portal-link").await.attr("href").await.unwrap().unwrap();
        assert!(link.starts_with(&format!("{base}/console/link/")), "{link}");
        shot(&c, "tenant").await;
        sign_out(&c).await;

        // acme's portal: its own overview, no operator pages.
        open_portal(&c, &link).await;
        let header = find(&c, "header").await.text().await.unwrap();
        assert!(header.contains("Tenant acme"), "{header}");
        assert!(!header.contains("Tenants"), "a tenant has no operator pages: {header}");
        let overview = main_text(&c).await;
        assert!(!overview.contains("Queue"), "a tenant sees no queue depth: {overview}");
        // The link opened once.
        c.goto(&link).await.unwrap();
        assert!(main_text(&c).await.contains("expired or was opened already"));

        // A form error shows beside its field, and nothing is made.
        c.goto(&format!("{base}/console/subscriptions/new")).await.unwrap();
        fill(&c, "name", "orders").await;
        fill(&c, "url", "not a url").await;
        fill(&c, "events", "coupon.*").await;
        click(&c, "Create").await;
        let error = find(&c, ".field-error[data-field='url']").await.text().await.unwrap();
        assert!(error.starts_with("url:"), "{error}");
        assert_eq!(
            find(&c, "#f-url").await.attr("aria-invalid").await.unwrap().as_deref(),
            Some("true")
        );
        shot(&c, "subscription-form-error").await;

        // A subscription, and a test event watched until it arrives.
        let (orders, secret) = create_subscription(&c, &base, "orders", &rx.url("orders")).await;
        rx.trust("orders", &[&secret]);
        click(&c, "Send test event").await;
        assert!(path(&c).await.starts_with("/console/deliveries/dlv_"));
        let page = wait_for_text(&c, "✓ delivered").await;
        assert!(page.contains("Attempt 1: ✓ 204"), "{page}");
        assert!(page.contains("x-team"), "the request headers are shown: {page}");
        shot(&c, "delivery").await;
        let arrived = rx
            .wait_for(Duration::from_secs(10), "the test event", |a| !a.is_empty())
            .await;
        assert!(
            arrived.iter().all(|a| a.path == "orders" && a.verified),
            "signed with the secret the page showed"
        );

        // A failing endpoint: the delivery waits for a retry; once the
        // receiver recovers, "Retry now" delivers it.
        let (flaky, secret) = create_subscription(&c, &base, "flaky", &rx.url("flaky")).await;
        rx.trust("flaky", &[&secret]);
        click(&c, "Send test event").await;
        let page = wait_for_text(&c, "retrying").await;
        assert!(page.contains("Attempt 1: ✗ 500"), "{page}");
        recovered.store(true, Ordering::SeqCst);
        click(&c, "Retry now").await;
        let page = wait_for_text(&c, "✓ delivered").await;
        assert!(page.contains("Attempt 2: ✓ 204"), "{page}");
        let flaky_arrivals = rx.at("flaky");
        assert_eq!(flaky_arrivals.len(), 2, "one failed attempt, one retried");
        assert!(flaky_arrivals.iter().all(|a| a.verified));

        // The log lists both, newest first, filtered by subscription.
        c.goto(&format!("{base}/console/deliveries?subscription={flaky}"))
            .await
            .unwrap();
        let log = main_text(&c).await;
        assert!(log.contains(&flaky) && !log.contains(&orders), "{log}");
        c.goto(&format!("{base}/console/deliveries")).await.unwrap();
        let log = main_text(&c).await;
        assert!(log.contains(&flaky) && log.contains(&orders), "{log}");
        shot(&c, "deliveries").await;

        // On a phone-sized screen no page is wider than the screen: wide
        // tables scroll inside their box.
        c.set_window_size(390, 844).await.unwrap();
        for page in [
            "/console".to_owned(),
            "/console/deliveries".to_owned(),
            format!("/console/subscriptions/{flaky}"),
            "/console/subscriptions/new".to_owned(),
        ] {
            c.goto(&format!("{base}{page}")).await.unwrap();
            let (wide, screen) = (
                c.execute("return document.documentElement.scrollWidth", vec![])
                    .await
                    .unwrap(),
                c.execute("return window.innerWidth", vec![]).await.unwrap(),
            );
            assert!(
                wide.as_u64().unwrap() <= screen.as_u64().unwrap(),
                "{page} is {wide}px wide on a {screen}px screen"
            );
        }
        c.goto(&format!("{base}/console/deliveries")).await.unwrap();
        shot(&c, "phone-deliveries").await;
        c.set_window_size(1280, 1000).await.unwrap();

        // Reveal shows the secret only when asked.
        c.goto(&format!("{base}/console/subscriptions/{orders}")).await.unwrap();
        assert!(!main_text(&c).await.contains("whsec_"), "no secret until revealed");
        shot(&c, "subscription").await;
        click(&c, "Reveal the secret").await;
        assert_eq!(
            find(&c, "[data-secret]").await.text().await.unwrap(),
            secret_of(&admin, &orders).await
        );

        // A post without the session's CSRF token is refused, and does nothing.
        let page = post_without_csrf(&c, &format!("/console/subscriptions/{orders}/disable"), json!({})).await;
        assert!(page.contains("Not allowed") && page.contains("CSRF"), "{page}");
        let forged = json!({"csrf": "forged"});
        let page = post_without_csrf(&c, &format!("/console/subscriptions/{orders}/disable"), forged).await;
        assert!(page.contains("Not allowed") && page.contains("CSRF"), "{page}");
        c.goto(&format!("{base}/console/subscriptions/{orders}")).await.unwrap();
        let sub = admin.get(&format!("/v1/subscriptions/{orders}")).await.unwrap();
        assert_eq!(sub["status"], "active", "{sub}");
        // With it, through the page's own button, it works.
        click(&c, "Disable").await;
        assert!(main_text(&c).await.contains("Disabled"));
        click(&c, "Enable").await;

        // The overview counts acme's attempts: two succeeded, one failed.
        c.goto(&format!("{base}/console")).await.unwrap();
        assert_eq!(find(&c, "#total-succeeded").await.text().await.unwrap(), "2");
        assert_eq!(find(&c, "#total-failed").await.text().await.unwrap(), "1");
        shot(&c, "overview").await;

        // An Ed25519 subscription: the receiver holds only the public key
        // the page shows, and verifies the v1a signature with it.
        c.goto(&format!("{base}/console/subscriptions/new")).await.unwrap();
        fill(&c, "name", "signed").await;
        fill(&c, "url", &rx.url("signed")).await;
        fill(&c, "events", "coupon.*").await;
        find(&c, "#f-signature").await.select_by_value("ed25519").await.unwrap();
        click(&c, "Create").await;
        let key = find(&c, "[data-secret]").await.text().await.unwrap();
        assert!(key.starts_with("whsk_"), "{key}");
        let public = find(&c, "[data-public-key]").await.text().await.unwrap();
        assert!(public.starts_with("whpk_"), "{public}");
        rx.trust("signed", &[&public]);
        click(&c, "Go to signed").await;
        assert_eq!(find(&c, "[data-public-key]").await.text().await.unwrap(), public);
        click(&c, "Send test event").await;
        wait_for_text(&c, "✓ delivered").await;
        let signed = rx.at("signed");
        assert_eq!(signed.len(), 1);
        assert!(signed[0].verified, "verified with the public key alone");
        let header = signed[0].headers["webhook-signature"].to_str().unwrap();
        assert!(header.starts_with("v1a,"), "{header}");
        sign_out(&c).await;

        // globex's portal sees none of acme's objects, even by their URLs.
        let link = admin.post("/v1/tenants/globex/portal", "").await.unwrap();
        open_portal(&c, link["url"].as_str().unwrap()).await;
        c.goto(&format!("{base}/console/subscriptions")).await.unwrap();
        let list = main_text(&c).await;
        assert!(list.contains("No subscriptions yet."), "{list}");
        c.goto(&format!("{base}/console/deliveries")).await.unwrap();
        let log = main_text(&c).await;
        assert!(log.contains("No deliveries match.") && !log.contains("dlv_"), "{log}");
        c.goto(&format!("{base}/console/subscriptions/{orders}")).await.unwrap();
        assert!(find(&c, "h1").await.text().await.unwrap().contains("Not found"));
        assert!(!main_text(&c).await.contains(&rx.url("orders")));
        c.goto(&format!("{base}/console/tenants")).await.unwrap();
        assert!(
            main_text(&c).await.contains("operator's"),
            "operator pages refuse a tenant"
        );
        let page = post_without_csrf(&c, &format!("/console/subscriptions/{orders}/delete"), json!({})).await;
        assert!(page.contains("Not allowed"), "{page}");
        assert!(
            admin.get(&format!("/v1/subscriptions/{orders}")).await.is_ok(),
            "still there"
        );
        assert!(c.find(Locator::Css("[data-secret]")).await.is_err());
    })
    .await;
    hookd.stop().await;
}

/// The subscription's current secret, through the admin API.
async fn secret_of(admin: &hookd::api::client::ApiClient, id: &str) -> String {
    admin.get(&format!("/v1/subscriptions/{id}/secret")).await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The console over hookd's own HTTPS, as Chromium speaks it: HTTP/2 by
/// ALPN (so no `Host`, only `:authority`), a certificate Chromium is told
/// to trust by its key alone. An operator signs in, makes a tenant and its
/// portal link, and the tenant's portal opens; the session cookie is
/// `Secure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_over_https_with_http2() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut config = config(&dir.path().join("data"));
    config.server.tls_cert = Some(cert);
    config.server.tls_key = Some(key);
    let hookd = Hookd::start(config).await;
    let base = hookd.url.replacen("http://", "https://", 1);
    // Chromium trusts this certificate's key, and no other certificate.
    let spki = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
        rcgen::PublicKeyData::subject_public_key_info(&certified.signing_key),
    ));
    let args = vec![format!("--ignore-certificate-errors-spki-list={spki}")];

    Browser::run_with("console_over_https", &args, move |c| async move {
        sign_in(&c, &base, ADMIN).await;
        assert_eq!(path(&c).await, "/console", "signed in over HTTPS");
        let protocol = c
            .execute(
                "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(protocol, json!("h2"), "Chromium speaks HTTP/2 to the console");
        let cookie = c.get_named_cookie("hookd_session").await.unwrap();
        assert_eq!(cookie.secure(), Some(true), "the session cookie is Secure over HTTPS");

        c.goto(&format!("{base}/console/tenants")).await.unwrap();
        fill(&c, "id", "acme").await;
        fill(&c, "name", "Acme Inc.").await;
        click(&c, "Create tenant").await;
        assert!(main_text(&c).await.contains("Tenant created."));
        c.goto(&format!("{base}/console/tenants/acme")).await.unwrap();
        click(&c, "Make a portal link").await;
        let link = find(&c, "#portal-link").await.attr("href").await.unwrap().unwrap();
        assert!(
            link.starts_with(&format!("{base}/console/link/")),
            "the link is on the HTTPS origin: {link}"
        );
        sign_out(&c).await;
        open_portal(&c, &link).await;
        let header = find(&c, "header").await.text().await.unwrap();
        assert!(header.contains("Tenant acme"), "the tenant's portal opened: {header}");
    })
    .await;
    hookd.stop().await;
}
