//! hookd running inside the test process on a port-0 listener, and the
//! client that talks to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookd::api::client::ApiClient;
use hookd::config::Config;
use hookd::history::History;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long [`Hookd::wait_for`] waits.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running hookd; stopped by [`Hookd::stop`] (or cancelled on drop).
pub struct Hookd {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Talks to its API with the config's first API key, if any.
    pub api: ApiClient,
    /// Stops it.
    shutdown: CancellationToken,
    /// Its task.
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Hookd {
    /// Runs hookd with `config`, as `hookd serve` does.
    pub async fn start(config: Config) -> Hookd {
        Hookd::spawn(config, None).await
    }

    /// Runs hookd with `config`, writing its delivery log to `history`
    /// (which the test may also read or write).
    pub async fn start_with_history(config: Config, history: Arc<dyn History>) -> Hookd {
        Hookd::spawn(config, Some(history)).await
    }

    async fn spawn(config: Config, history: Option<Arc<dyn History>>) -> Hookd {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hookd's listener");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let key = config.server.api_keys.first().map(|k| k.expose().to_owned());
        let api = ApiClient::new(&url, key);
        let shutdown = CancellationToken::new();
        let task = match history {
            None => tokio::spawn(hookd::run(config, listener, shutdown.clone())),
            Some(history) => {
                let queue = hookd::open_queue(&config).await.expect("open the queue");
                tokio::spawn(hookd::run_with_backends(
                    config,
                    queue,
                    history,
                    listener,
                    shutdown.clone(),
                ))
            }
        };
        Hookd {
            url,
            api,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops it, and checks that it ran and stopped cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("hookd task").expect("hookd ran");
        }
    }

    /// POSTs one event and returns hookd's answer.
    pub async fn send(&self, event: Value) -> Value {
        self.api.post("/v1/events", event.to_string()).await.unwrap()
    }

    /// Polls `GET path` until it answers and `check` holds, for at most
    /// [`WAIT`] (an error answer, like a 404 for what is not there yet,
    /// counts as not yet).
    pub async fn wait_for(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        wait_for_answer(&self.api, path, what, check).await
    }
}

/// Reads `path` with `client` until its answer passes `check`; panics
/// naming `what` and the last answer after [`WAIT`].
pub async fn wait_for_answer(client: &ApiClient, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match client.get(path).await {
            Ok(answer) if check(&answer) => return answer,
            Ok(answer) => format!("{answer:#}"),
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Hookd {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
