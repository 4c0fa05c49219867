//! A real headless Chromium, driven through WebDriver by `chromedriver`
//! (Debian's `chromium` and `chromium-driver`, which `tests/run.sh`
//! installs), each started on a free loopback port for one test.
//!
//! [`Browser::run`] takes a screenshot and the page's HTML when a test
//! fails, into `<target>/tmp/console-screenshots/<test>/`; with
//! `HOOKD_CONSOLE_SHOTS=<dir>` set, [`Browser::shot`] also writes the pages
//! a test names there (how `docs/console/` is refreshed).

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::free_port;

/// How long a page or an element may take to appear.
pub const WAIT: Duration = Duration::from_secs(20);

/// `chromedriver` and a Chromium session of its own. Killed on drop.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    /// The driver process.
    driver: Child,
    /// Chromium's profile, fresh for the test.
    _profile: tempfile::TempDir,
    /// The test's name, for its screenshots.
    name: String,
}

fn program(candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .unwrap_or_else(|| {
            panic!(
                "none of {candidates:?} exists: run `bash tests/run.sh`, which installs chromium and chromium-driver"
            )
        })
}

impl Browser {
    /// Starts `chromedriver` on a free port and a headless Chromium.
    pub async fn start(name: &str) -> Browser {
        Browser::start_with(name, &[]).await
    }

    /// [`Browser::start`] with more Chromium arguments.
    pub async fn start_with(name: &str, extra_args: &[String]) -> Browser {
        let driver_bin = program(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = program(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(extra_args.iter().cloned());
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": args,
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() < WAIT => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver at {url}: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
            name: name.to_owned(),
        }
    }

    /// Runs `test` with a browser named `name`; if it fails, writes a
    /// screenshot and the HTML of the page it was on before failing in turn.
    pub async fn run<F, Fut>(name: &str, test: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Browser::run_with(name, &[], test).await
    }

    /// [`Browser::run`] with more Chromium arguments.
    pub async fn run_with<F, Fut>(name: &str, extra_args: &[String], test: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let browser = Browser::start_with(name, extra_args).await;
        let outcome = tokio::spawn(test(browser.client.clone())).await;
        if let Err(e) = outcome {
            let dir = failure_dir(name);
            let _ = std::fs::create_dir_all(&dir);
            if let Ok(png) = browser.client.screenshot().await {
                let _ = std::fs::write(dir.join("failure.png"), png);
            }
            if let Ok(html) = browser.client.source().await {
                let _ = std::fs::write(dir.join("failure.html"), html);
            }
            let url = browser
                .client
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            eprintln!("browser test {name} failed on {url}: screenshot in {}", dir.display());
            browser.close().await;
            std::panic::resume_unwind(e.into_panic());
        }
        browser.close().await;
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = &self.name;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// Where a failed test's screenshot goes.
fn failure_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("console-screenshots")
        .join(name)
}

/// Writes a screenshot of the current page as `<name>.png` into
/// `$HOOKD_CONSOLE_SHOTS`, if set.
pub async fn shot(client: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("HOOKD_CONSOLE_SHOTS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let png = client.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// The element at `css`, waiting for it to appear.
pub async fn find(client: &Client, css: &str) -> Element {
    client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
}

/// Types `text` into the field named `name`, replacing what it held.
pub async fn fill(client: &Client, name: &str, text: &str) {
    let field = find(client, &format!("[name='{name}']")).await;
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Clicks the button (or link) whose text is `label`, and waits until the
/// page it was on is gone (every button and link of the console leads to
/// another page).
pub async fn click(client: &Client, label: &str) {
    let xpath = format!("//button[normalize-space()='{label}'] | //a[normalize-space()='{label}']");
    let element = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("no button or link `{label}`: {e}"));
    element.click().await.unwrap();
    let started = Instant::now();
    // The clicked element goes stale once the next page replaced it.
    while element.is_displayed().await.is_ok() {
        assert!(started.elapsed() < WAIT, "clicking `{label}` never left the page");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    find(client, "main").await;
}

/// The text of the page's `<main>`.
pub async fn main_text(client: &Client) -> String {
    find(client, "main").await.text().await.unwrap()
}

/// Waits until `<main>` holds `text`, reloading every half second (pages
/// also refresh themselves while something moves); returns the text.
pub async fn wait_for_text(client: &Client, text: &str) -> String {
    let started = Instant::now();
    loop {
        let now = client
            .find(Locator::Css("main"))
            .await
            .ok()
            .map(|m| async move { m.text().await.unwrap_or_default() });
        let now = match now {
            Some(fut) => fut.await,
            None => String::new(),
        };
        if now.contains(text) {
            return now;
        }
        if started.elapsed() > WAIT {
            panic!("the page never showed `{text}`; it shows:\n{now}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.refresh().await.unwrap();
    }
}

/// The path of the current page.
pub async fn path(client: &Client) -> String {
    client.current_url().await.unwrap().path().to_owned()
}

/// Submits a form of `fields` to `path` from the current page (same
/// origin, with its cookie) but without the page's CSRF token, as a
/// forged form would; returns the `<main>` text of the page it led to.
/// (The console's Content-Security-Policy forbids `fetch` from its pages,
/// so a form is the only way to post.)
pub async fn post_without_csrf(client: &Client, path: &str, fields: Value) -> String {
    let script = r#"
        const [path, fields] = arguments;
        const form = document.createElement('form');
        form.method = 'post';
        form.action = path;
        for (const [name, value] of Object.entries(fields)) {
            const input = document.createElement('input');
            input.type = 'hidden';
            input.name = name;
            input.value = value;
            form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
    "#;
    let before = find(client, "main").await;
    client
        .execute(script, vec![json!(path), fields])
        .await
        .expect("submit the form");
    let started = Instant::now();
    while before.is_displayed().await.is_ok() {
        assert!(started.elapsed() < WAIT, "the forged form never left the page");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    main_text(client).await
}
