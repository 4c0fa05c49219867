//! The `hookd` command: parse the CLI, load config, set up logging, run.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use chrono::Utc;
use serde_json::Value;

use hookd::api::client::{ApiClient, Error as ApiError};
use hookd::cli;
use hookd::config::Config;
use hookd::telemetry::{self, LogFormat};

/// hookd: webhook delivery daemon.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Where a running hookd is, for the verbs that talk to one.
#[derive(clap::Args)]
struct Remote {
    /// Base URL of the running hookd (default: from the config's server.listen).
    #[arg(long, env = "HOOKD_URL")]
    server: Option<String>,
    /// API key (default: the first of the config's server.api_keys).
    #[arg(long, env = "HOOKD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Config file, to find the server address and API key.
    #[arg(long, short, env = "HOOKD_CONFIG")]
    config: Option<PathBuf>,
}

impl Remote {
    /// The `--server` / `--config` arguments as given, for a command line
    /// printed back to the operator. The API key is never printed.
    fn resume_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(server) = &self.server {
            args.extend(["--server".to_string(), server.clone()]);
        }
        if let Some(config) = &self.config {
            args.extend(["--config".to_string(), config.display().to_string()]);
        }
        args
    }

    /// Whether the API key came from `--api-key` rather than `HOOKD_API_KEY`
    /// or the config (a printed command line then needs it again).
    fn api_key_from_flag(&self) -> bool {
        self.api_key.is_some() && std::env::var("HOOKD_API_KEY").ok() != self.api_key
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run hookd: the HTTP API, the stream consumer and the dispatcher.
    Serve {
        /// Config file (TOML).
        #[arg(long, short, env = "HOOKD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Send one event to a running hookd.
    Send {
        /// Dotted event type, like coupon.redeemed.
        #[arg(long = "type")]
        event_type: String,
        /// JSON object payload.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Event id (default: generated). Repeating an id within the dedup window is a no-op.
        #[arg(long)]
        id: Option<String>,
        /// The tenant the event belongs to: it reaches that tenant's
        /// subscriptions and the operator's (default: no tenant).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Try a plugin locally before attaching it to a subscription.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Validate a config file and print the effective config, secrets redacted.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run hookd and a verifying receiver in one process, and send sample events.
    Demo {
        /// Keep running after the samples arrive (Ctrl-C to stop).
        #[arg(long)]
        keep: bool,
    },
    /// List dead deliveries (retries exhausted), most recent first.
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one queued or dead delivery, as JSON.
    Delivery {
        /// Delivery id (dlv_…).
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Subscriptions: status (active / disabled, why, since), delivered,
    /// retrying and dead counts, last success and failure.
    Subscriptions {
        /// Show only this one, in detail.
        name: Option<String>,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// The delivery log, newest first.
    Deliveries {
        /// Only this subscription's deliveries.
        #[arg(long)]
        subscription: Option<String>,
        /// Only deliveries in this state: pending, in_flight, delivered,
        /// filtered, retrying, dead, parked.
        #[arg(long)]
        state: Option<String>,
        /// Created at or after: RFC 3339, or how long ago (30m, 1h, 2d).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// Created before: RFC 3339, or how long ago (30m, 1h, 2d).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Page size (1 to 1000; hookd's default is 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this cursor (as printed by `more: --cursor …`).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow the cursors to the last page.
        #[arg(long)]
        all: bool,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// One delivery and every attempt made: when, how long, the status, the error.
    Attempts {
        /// Delivery id (dlv_…).
        id: String,
        /// Also print each attempt's request and response headers and body excerpt.
        #[arg(long, short)]
        verbose: bool,
        /// Print the JSON answer instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// One event's deliveries: to whom, where each stands, how many attempts.
    Event {
        /// Event id.
        id: String,
        /// Print the JSON answer instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Attempt a retrying delivery now (a dead one is replayed).
    Retry {
        /// Delivery id (dlv_…).
        id: String,
        /// Print the JSON answer instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Replay one dead delivery, a subscription's dead or retrying
    /// deliveries (--subscription), or one event (--event).
    Replay {
        /// Delivery id (dlv_…): put this dead delivery back in the queue, due now, attempts reset.
        id: Option<String>,
        /// Replay this subscription's deliveries, page after page.
        #[arg(long)]
        subscription: Option<String>,
        /// With --subscription: dead or retrying.
        #[arg(long)]
        state: Option<String>,
        /// With --subscription: created at or after (RFC 3339, or how long ago: 30m, 1h, 2d).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// With --subscription: created before (RFC 3339, or how long ago).
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// With --subscription: resume where an interrupted run stopped.
        #[arg(long)]
        cursor: Option<String>,
        /// With --subscription: deliveries per call.
        #[arg(long)]
        limit: Option<usize>,
        /// Fan this event out again.
        #[arg(long)]
        event: Option<String>,
        /// With --event: only to this subscription (repeatable).
        #[arg(long = "to-subscription", value_name = "NAME")]
        to_subscriptions: Vec<String>,
        /// With --event: idempotency key; replaying again with the same key does nothing.
        #[arg(long)]
        key: Option<String>,
        /// Print the JSON answers instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Enable a subscription and resume its parked deliveries, in order.
    Enable {
        /// Subscription name.
        subscription: String,
        /// Print the JSON answer instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Disable a subscription: nothing is sent to it, its deliveries are parked.
    Disable {
        /// Subscription name.
        subscription: String,
        /// Why, shown in `hookd subscriptions` and the notification.
        #[arg(long)]
        reason: Option<String>,
        /// Print the JSON answer instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run PLUGIN.wasm once on an event and print its verdict, the body and
    /// headers hookd would send, and how long it took.
    Run {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// The event, as producers send it to POST /v1/events (JSON file; - for stdin).
        #[arg(long)]
        event: PathBuf,
        /// A plugin config entry, as in [subscriptions.plugin.config] (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        entries: Vec<String>,
        /// hookd config file whose [plugins] limits (deadline, memory) apply.
        #[arg(long = "hookd-config")]
        hookd_config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective config.
    Check {
        /// Config file (TOML).
        #[arg(long, short, env = "HOOKD_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Serving logs what it does; the other verbs print their answers.
    let default = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    telemetry::init(cli.log_format, default);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(ApiError::Status { status, message }) = e.downcast_ref::<ApiError>() {
                if *status == http::StatusCode::UNAUTHORIZED {
                    eprintln!("hint: give the API key with --api-key, HOOKD_API_KEY or the config's server.api_keys");
                } else if *status == http::StatusCode::NOT_FOUND && message == "no such endpoint" {
                    eprintln!("hint: that hookd does not have this route: is it older than this hookd command?");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => serve(config).await,
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let config = Config::load(config.as_deref())?;
            print!("{}", config.to_redacted_toml());
            eprintln!("config is valid: {} subscription(s)", config.subscriptions.len());
            Ok(())
        }
        Command::Send {
            event_type,
            data,
            id,
            tenant,
            remote,
        } => {
            let data: serde_json::Value = serde_json::from_str(&data).context("--data is not valid JSON")?;
            let mut event = serde_json::json!({ "type": event_type, "data": data });
            if let Some(id) = id {
                event["id"] = id.into();
            }
            if let Some(tenant) = tenant {
                hookd::model::TenantId::parse(&tenant).map_err(|p| anyhow::anyhow!("--tenant: {p}"))?;
                event["tenant"] = tenant.into();
            }
            let answer = client(&remote)?.post("/v1/events", event.to_string()).await?;
            println!("{answer}");
            Ok(())
        }
        Command::Demo { keep } => hookd::demo::run(keep).await,
        Command::Plugin {
            command:
                PluginCommand::Run {
                    plugin,
                    event,
                    entries,
                    hookd_config,
                },
        } => {
            let settings = Config::load(hookd_config.as_deref())?.plugins;
            let event = if event.as_os_str() == "-" {
                let mut text = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)?;
                text
            } else {
                std::fs::read(&event).with_context(|| format!("cannot read the event file {}", event.display()))?
            };
            let mut config = Vec::new();
            for entry in entries {
                let (key, value) = entry
                    .split_once('=')
                    .with_context(|| format!("--config `{entry}`: write KEY=VALUE"))?;
                config.push((key.to_owned(), value.to_owned()));
            }
            let report = hookd::plugin::run_once(&settings, &plugin, &event, config).await?;
            print!("{}", report.render());
            Ok(())
        }
        Command::Dead { limit, json, remote } => {
            let answer = client(&remote)?
                .get(&format!("/v1/deliveries/dead?limit={limit}"))
                .await?;
            show(&answer, json, cli::dead)
        }
        Command::Delivery { id, remote } => {
            let answer = client(&remote)?
                .get(&format!("/v1/deliveries/{}", cli::encode(&id)))
                .await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::Subscriptions { name, json, remote } => {
            let path = match &name {
                Some(name) => format!("/v1/subscriptions/{}", cli::encode(name)),
                None => "/v1/subscriptions".into(),
            };
            let answer = client(&remote)?.get(&path).await?;
            show(&answer, json, cli::subscriptions)
        }
        Command::Deliveries {
            subscription,
            state,
            from,
            to,
            limit,
            cursor,
            all,
            json,
            remote,
        } => {
            let query =
                cli::DeliveryQuery::new(subscription, state, from.as_deref(), to.as_deref(), limit, Utc::now())?;
            deliveries(&client(&remote)?, &query, cursor, all, json).await
        }
        Command::Attempts {
            id,
            verbose,
            json,
            remote,
        } => {
            let answer = client(&remote)?
                .get(&format!("/v1/deliveries/{}/attempts", cli::encode(&id)))
                .await?;
            show(&answer, json, |a| cli::attempts(a, verbose))
        }
        Command::Event { id, json, remote } => {
            let answer = client(&remote)?
                .get(&format!("/v1/events/{}", cli::encode(&id)))
                .await?;
            show(&answer, json, cli::event)
        }
        Command::Retry { id, json, remote } => {
            let answer = client(&remote)?
                .post(&format!("/v1/deliveries/{}/retry", cli::encode(&id)), "")
                .await?;
            show(&answer, json, cli::retried)
        }
        Command::Replay {
            id,
            subscription,
            state,
            from,
            to,
            cursor,
            limit,
            event,
            to_subscriptions,
            key,
            json,
            remote,
        } => {
            let args = cli::ReplayArgs {
                id,
                subscription,
                state,
                from,
                to,
                cursor,
                limit,
                event,
                to_subscriptions,
                key,
            };
            let replay = args.check(Utc::now())?;
            let api = client(&remote)?;
            match replay {
                cli::Replay::Delivery { id } => {
                    let answer = api
                        .post(&format!("/v1/deliveries/{}/replay", cli::encode(&id)), "")
                        .await?;
                    show(&answer, json, cli::replayed)
                }
                cli::Replay::Event { id, subscriptions, key } => {
                    let body = cli::event_replay_body(&subscriptions, key.as_deref());
                    let answer = api
                        .post(&format!("/v1/events/{}/replay", cli::encode(&id)), body.to_string())
                        .await?;
                    show(&answer, json, |a| cli::event_replayed(&id, a))
                }
                cli::Replay::Subscription(bulk) => replay_subscription(&api, &bulk, &remote, json).await,
            }
        }
        Command::Enable {
            subscription,
            json,
            remote,
        } => {
            let answer = client(&remote)?
                .post(&format!("/v1/subscriptions/{}/enable", cli::encode(&subscription)), "")
                .await?;
            show(&answer, json, cli::enabled)
        }
        Command::Disable {
            subscription,
            reason,
            json,
            remote,
        } => {
            let body = match &reason {
                Some(reason) => serde_json::json!({ "reason": reason }).to_string(),
                None => String::new(),
            };
            let answer = client(&remote)?
                .post(
                    &format!("/v1/subscriptions/{}/disable", cli::encode(&subscription)),
                    body,
                )
                .await?;
            show(&answer, json, |a| cli::disabled(a, reason.as_deref()))
        }
    }
}

/// Prints `answer` as pretty JSON, or as `render` has it.
fn show(answer: &Value, json: bool, render: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
    } else {
        print!("{}", render(answer));
    }
    Ok(())
}

/// `hookd deliveries`: one page (and the next cursor on stderr), or with
/// `all` every page from `cursor` on.
async fn deliveries(
    api: &ApiClient,
    query: &cli::DeliveryQuery,
    mut cursor: Option<String>,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut items = Vec::new();
    loop {
        let answer = api.get(&query.path(cursor.as_deref())).await?;
        let page = cli::delivery_items(&answer)?;
        let next = cli::next_cursor(&answer);
        if !all {
            show(&answer, json, |_| cli::deliveries(page))?;
            if let Some(next) = next {
                eprintln!("{}", cli::more_hint(next));
            }
            return Ok(());
        }
        items.extend(page.iter().cloned());
        match next {
            Some(next) if cursor.as_deref() == Some(next) => bail!("hookd answered the same cursor twice: {next}"),
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let answer = serde_json::json!({ "deliveries": items, "next_cursor": null });
    show(&answer, json, |_| cli::deliveries(&items))
}

/// `hookd replay --subscription`: calls until no cursor is left, progress on
/// stderr; on a failure, says how to resume from the last cursor.
async fn replay_subscription(
    api: &ApiClient,
    bulk: &cli::SubscriptionReplay,
    remote: &Remote,
    json: bool,
) -> anyhow::Result<()> {
    let mut cursor = bulk.cursor.clone();
    let mut totals = cli::ReplayPage::default();
    for n in 1.. {
        let answer = match api.post(&bulk.path(), bulk.body(cursor.as_deref()).to_string()).await {
            Ok(answer) => answer,
            Err(e) => {
                let resume = bulk.resume_command(cursor.as_deref(), &remote.resume_args());
                let key = if remote.api_key_from_flag() {
                    " (add your --api-key)"
                } else {
                    ""
                };
                bail!(
                    "{e}\n{} replayed before the failure; resume with{key}:\n  {resume}",
                    cli::count(totals.replayed, "delivery", "deliveries")
                );
            }
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        let page = cli::ReplayPage::from_answer(&answer)?;
        totals.add(&page);
        eprintln!("{}", cli::replay_progress(n, &page, &totals));
        match page.next_cursor {
            Some(next) if cursor.as_ref() == Some(&next) => bail!("hookd answered the same cursor twice: {next}"),
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if !json {
        print!("{}", cli::replay_totals(&bulk.name, &totals));
    }
    Ok(())
}

async fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref())?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    hookd::run(config, listener, shutdown).await
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C; a second signal exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("signal received: draining (send it again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::warn!("second signal: exiting now; unsettled deliveries fall due again after their lease");
    std::process::exit(130);
}

fn client(remote: &Remote) -> anyhow::Result<ApiClient> {
    let config = match (&remote.server, &remote.config) {
        (Some(_), None) => None,
        (_, path) => Some(Config::load(path.as_deref())?),
    };
    let base = match (&remote.server, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(config)) => {
            let addr = config.server.listen;
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                addr.ip().to_string()
            };
            let host = if addr.is_ipv6() && host != "127.0.0.1" {
                format!("[{host}]")
            } else {
                host
            };
            format!("http://{host}:{}", addr.port())
        }
        (None, None) => bail!("give --server URL or --config FILE"),
    };
    let api_key = remote
        .api_key
        .clone()
        .or_else(|| config.and_then(|c| c.server.api_keys.first().map(|k| k.expose().to_owned())));
    Ok(ApiClient::new(&base, api_key).as_cli())
}
