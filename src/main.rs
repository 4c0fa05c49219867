//! The `hookd` command: parse the CLI, load config, set up logging, run.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hookd::api::client::ApiClient;
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
    /// Show one queued or dead delivery.
    Delivery {
        /// Delivery id (dlv_…).
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Put a dead delivery back in the queue, due now, attempts reset.
    Replay {
        /// Delivery id (dlv_…).
        id: String,
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
            remote,
        } => {
            let data: serde_json::Value = serde_json::from_str(&data).context("--data is not valid JSON")?;
            let mut event = serde_json::json!({ "type": event_type, "data": data });
            if let Some(id) = id {
                event["id"] = id.into();
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
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
                return Ok(());
            }
            println!(
                "{:<38}  {:<20}  {:<24}  {:>8}  LAST ERROR",
                "DELIVERY", "SUBSCRIPTION", "EVENT TYPE", "ATTEMPTS"
            );
            for d in answer["deliveries"].as_array().into_iter().flatten() {
                println!(
                    "{:<38}  {:<20}  {:<24}  {:>8}  {}",
                    d["id"].as_str().unwrap_or(""),
                    d["subscription"].as_str().unwrap_or(""),
                    d["event_type"].as_str().unwrap_or(""),
                    d["attempts"],
                    d["last_error"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Delivery { id, remote } => {
            let answer = client(&remote)?.get(&format!("/v1/deliveries/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::Replay { id, remote } => {
            let answer = client(&remote)?
                .post(&format!("/v1/deliveries/{id}/replay"), "")
                .await?;
            println!("{answer}");
            Ok(())
        }
    }
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
    Ok(ApiClient::new(&base, api_key))
}
