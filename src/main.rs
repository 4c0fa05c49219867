//! The `hookd` command: parse the CLI, load config, set up logging, run.

/// mimalloc instead of the system allocator: measured with the load tool,
/// glibc's malloc and free (with its consolidation of freed chunks) were a
/// tenth to a third of hookd's CPU time under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// PEM file of CA certificates to trust, beside the system's, for an
    /// `https://` hookd (one serving its own `server.tls_cert`).
    #[arg(long, env = "HOOKD_CA_FILE")]
    ca_file: Option<PathBuf>,
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
        if let Some(ca_file) = &self.ca_file {
            args.extend(["--ca-file".to_string(), ca_file.display().to_string()]);
        }
        args
    }

    /// Whether the API key came from `--api-key` rather than `HOOKD_API_KEY`
    /// or the config (a printed command line then needs it again).
    fn api_key_from_flag(&self) -> bool {
        self.api_key.is_some() && std::env::var("HOOKD_API_KEY").ok() != self.api_key
    }
}

// Parsed once per run: the size of the largest verb's arguments costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Validate a config file and print the effective config, secrets
    /// redacted, then the `whpk_` public key of each `whsk_` secret.
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
    /// Subscriptions: list them (status, why, since; delivered, retrying and
    /// dead counts; last success and failure), show one (`hookd
    /// subscriptions NAME` or `show NAME`), make, change and delete them.
    #[command(args_conflicts_with_subcommands = true)]
    Subscriptions {
        #[command(subcommand)]
        command: Option<SubscriptionsCommand>,
        /// Show only this one, in detail (same as `hookd subscriptions show ID`).
        #[arg(conflicts_with_all = ["tenant", "limit", "cursor", "all"])]
        name: Option<String>,
        #[command(flatten)]
        list: SubscriptionList,
    },
    /// Tenants: the platform's customers, each with its subscriptions and keys.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// API keys: admin and producer keys of no tenant, and tenants' keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The catalogue of event types: descriptions, schemas, examples.
    EventTypes {
        #[command(subcommand)]
        command: EventTypesCommand,
    },
    /// The delivery log, newest first.
    Deliveries {
        /// Only this subscription's deliveries.
        #[arg(long)]
        subscription: Option<String>,
        /// Only deliveries in this state: pending, delivered,
        /// filtered, retrying, dead, parked, cancelled, expired.
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

/// `--json` and where the running hookd is: the flags every verb talking
/// to hookd takes.
#[derive(clap::Args)]
struct Call {
    /// Print hookd's JSON answer instead.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

/// The flags of the subscription listing.
#[derive(clap::Args)]
struct SubscriptionList {
    /// Only this tenant's subscriptions (admin keys; a tenant key sees only its own).
    #[arg(long)]
    tenant: Option<String>,
    /// Page size (1 to 1000; hookd's default is 100).
    #[arg(long)]
    limit: Option<usize>,
    /// Start after this cursor (as printed by `more: --cursor …`).
    #[arg(long)]
    cursor: Option<String>,
    /// Follow the cursors to the last page.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    call: Call,
}

/// The flags setting a subscription's fields, for `create` and `update`.
#[derive(clap::Args)]
struct SubscriptionFields {
    /// Its display name, unique within its tenant.
    #[arg(long)]
    name: Option<String>,
    /// Where to POST the webhooks.
    #[arg(long)]
    url: Option<String>,
    /// An event type it wants: exact, `prefix.*` or `*` (repeatable; on
    /// update, the given list replaces the old one).
    #[arg(long = "event", value_name = "PATTERN")]
    events: Vec<String>,
    /// A header sent with every request (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// What it is for.
    #[arg(long)]
    description: Option<String>,
    /// Most requests per second, and optionally the burst: 10, 0.5, 10/20.
    #[arg(long, value_name = "PER_SECOND[/BURST]")]
    rate_limit: Option<String>,
    /// Most deliveries in flight at once.
    #[arg(long, value_name = "N")]
    max_in_flight: Option<usize>,
    /// Retries after the first attempt.
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Timeout of one attempt, like 5s.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
}

#[derive(Subcommand)]
enum SubscriptionsCommand {
    /// List subscriptions (same as `hookd subscriptions` alone).
    List {
        #[command(flatten)]
        list: SubscriptionList,
    },
    /// Show one subscription in detail.
    Show {
        /// Its id (a config file subscription's is its name).
        id: String,
        #[command(flatten)]
        call: Call,
    },
    /// Make a subscription; prints its id and its signing secret.
    Create {
        #[command(flatten)]
        fields: SubscriptionFields,
        /// Its signature scheme: hmac (a whsec_ secret, v1 signatures; the
        /// default) or ed25519 (a whsk_ secret key, v1a signatures, which
        /// its receiver verifies with the whpk_ public key printed).
        #[arg(long, value_parser = ["hmac", "ed25519"])]
        signature: Option<String>,
        /// The tenant it is for (needed with an admin key; a tenant key's own by default).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        call: Call,
    },
    /// Change a subscription: only the fields given are sent (a JSON merge patch).
    Update {
        /// Its id (sub_…).
        id: String,
        #[command(flatten)]
        fields: SubscriptionFields,
        /// Remove this header (repeatable).
        #[arg(long = "no-header", value_name = "NAME")]
        no_headers: Vec<String>,
        /// Clear the description.
        #[arg(long, conflicts_with = "description")]
        no_description: bool,
        /// Remove the rate limit.
        #[arg(long, conflicts_with = "rate_limit")]
        no_rate_limit: bool,
        #[command(flatten)]
        call: Call,
    },
    /// Delete a subscription; its pending deliveries are cancelled.
    Delete {
        /// Its id (sub_…).
        id: String,
        #[command(flatten)]
        call: Call,
    },
    /// Print a subscription's signing secret.
    Secret {
        /// Its id (sub_…).
        id: String,
        #[command(flatten)]
        call: Call,
    },
    /// Make a new signing secret; the old one keeps signing for the grace period.
    RotateSecret {
        /// Its id (sub_…).
        id: String,
        /// How long the old secret keeps signing too, like 24h (hookd's default: 24h).
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
        /// The new secret's kind: hmac (whsec_) or ed25519 (whsk_); by
        /// default the kind of the newest secret.
        #[arg(long, value_parser = ["hmac", "ed25519"])]
        kind: Option<String>,
        #[command(flatten)]
        call: Call,
    },
    /// Send a test event to this subscription only.
    Test {
        /// Its id (sub_…).
        id: String,
        /// A type of the event catalogue with an example, like
        /// coupon.redeemed: its example is sent as the event's data.
        #[arg(long = "type")]
        event_type: String,
        #[command(flatten)]
        call: Call,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// List the tenants.
    List {
        #[command(flatten)]
        call: Call,
    },
    /// Show one tenant.
    Show {
        /// Tenant id.
        id: String,
        #[command(flatten)]
        call: Call,
    },
    /// Make a tenant.
    Create {
        /// Tenant id: 1 to 63 of a-z, 0-9, `_` and `-`, like acme.
        id: String,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its plan (a key of the config's [plans]).
        #[arg(long)]
        plan: Option<String>,
        /// Free-form data kept with it: a JSON object.
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        #[command(flatten)]
        call: Call,
    },
    /// Change a tenant: only the fields given are sent (a JSON merge patch).
    Update {
        /// Tenant id.
        id: String,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        /// A new plan, in force at once.
        #[arg(long, conflicts_with = "no_plan")]
        plan: Option<String>,
        /// Remove its plan.
        #[arg(long)]
        no_plan: bool,
        /// A JSON object merged into its metadata (a null value removes that key).
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        #[command(flatten)]
        call: Call,
    },
    /// Delete a tenant with its subscriptions (their pending deliveries
    /// cancelled) and its keys.
    Delete {
        /// Tenant id.
        id: String,
        #[command(flatten)]
        call: Call,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make an API key; prints it this once.
    Create {
        /// Make a key of this tenant (default role: tenant); without it, a
        /// key of no tenant (default role: admin).
        #[arg(long)]
        tenant: Option<String>,
        /// What it may do.
        #[arg(long, value_parser = ["admin", "producer", "tenant"])]
        role: Option<String>,
        /// A label for its owner.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        call: Call,
    },
    /// List keys: of this tenant, or of no tenant (the key itself is never shown).
    List {
        /// This tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        call: Call,
    },
    /// Revoke a key, on every hookd within a second.
    Revoke {
        /// Its id (key_…).
        key_id: String,
        /// The tenant it belongs to, if any.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        call: Call,
    },
}

#[derive(Subcommand)]
enum EventTypesCommand {
    /// List the event types.
    List {
        #[command(flatten)]
        call: Call,
    },
    /// Declare or replace an event type.
    Put {
        /// Its name, like coupon.redeemed.
        name: String,
        /// What it means.
        #[arg(long)]
        description: Option<String>,
        /// Its JSON Schema: a file, or the JSON itself.
        #[arg(long, value_name = "FILE|JSON")]
        schema: Option<String>,
        /// An example payload (JSON).
        #[arg(long, value_name = "JSON")]
        example: Option<String>,
        /// Mark it deprecated.
        #[arg(long)]
        deprecated: bool,
        #[command(flatten)]
        call: Call,
    },
    /// Delete an event type.
    Delete {
        /// Its name.
        name: String,
        #[command(flatten)]
        call: Call,
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
            if let Some((mode, because)) = config.history.postgres_tls_in_force()? {
                println!("\n# history.postgres_tls in force: {mode} ({because})");
            }
            let public = config.public_keys();
            if !public.is_empty() {
                println!("\n# Ed25519 public keys of the whsk_ secrets: give these to receivers, which verify v1a signatures with them");
                for (key, public) in public {
                    println!("# {key}: {public}");
                }
            }
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
            // As text: hookd checks it (its depth against ingest.max_depth too).
            let data: Box<serde_json::value::RawValue> =
                serde_json::from_str(&data).context("--data is not valid JSON")?;
            if let Some(tenant) = &tenant {
                hookd::model::TenantId::parse(tenant).map_err(|p| anyhow::anyhow!("--tenant: {p}"))?;
            }
            /// The event as sent, `data` copied as written.
            #[derive(serde::Serialize)]
            struct Sent {
                #[serde(rename = "type")]
                event_type: String,
                data: Box<serde_json::value::RawValue>,
                #[serde(skip_serializing_if = "Option::is_none")]
                id: Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                tenant: Option<String>,
            }
            let event = Sent {
                event_type,
                data,
                id,
                tenant,
            };
            let answer = client(&remote)?
                .post("/v1/events", serde_json::to_string(&event)?)
                .await?;
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
        Command::Subscriptions { command, name, list } => match (command, name) {
            (Some(command), _) => subscriptions_command(command).await,
            (None, Some(name)) => show_subscription(&name, &list.call).await,
            (None, None) => list_subscriptions(&list).await,
        },
        Command::Tenants { command } => tenants_command(command).await,
        Command::Keys { command } => keys_command(command).await,
        Command::EventTypes { command } => event_types_command(command).await,
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

/// Prints `answer` as pretty JSON, or as `render` has it when it can read it.
fn show_checked(
    answer: &Value,
    json: bool,
    render: impl FnOnce(&Value) -> Result<String, cli::Error>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
    } else {
        print!("{}", render(answer)?);
    }
    Ok(())
}

/// `/v1/subscriptions/{id}` and what follows it.
fn subscription_path(id: &str, rest: &str) -> String {
    format!("/v1/subscriptions/{}{rest}", cli::encode(id))
}

/// `hookd subscriptions NAME` / `hookd subscriptions show ID`.
async fn show_subscription(id: &str, call: &Call) -> anyhow::Result<()> {
    let answer = client(&call.remote)?.get(&subscription_path(id, "")).await?;
    show(&answer, call.json, cli::subscriptions)
}

/// `hookd subscriptions`: one page (and the next cursor on stderr), or
/// with `--all` every page.
async fn list_subscriptions(list: &SubscriptionList) -> anyhow::Result<()> {
    let api = client(&list.call.remote)?;
    let tenant = list.tenant.as_deref();
    if let Some(t) = tenant {
        cli::parse_tenant("--tenant", t)?;
    }
    let mut cursor = list.cursor.clone();
    let mut items = Vec::new();
    loop {
        let answer = api
            .get(&cli::subscriptions_path(tenant, list.limit, cursor.as_deref()))
            .await?;
        let page = cli::subscription_items(&answer)?;
        let next = cli::next_cursor(&answer);
        if !list.all {
            show(&answer, list.call.json, |_| cli::subscription_table(page))?;
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
    let answer = serde_json::json!({ "subscriptions": items, "next_cursor": null });
    show(&answer, list.call.json, |_| cli::subscription_table(&items))
}

impl SubscriptionFields {
    /// The fields as [`cli::SubscriptionArgs`].
    fn into_args(self) -> cli::SubscriptionArgs {
        cli::SubscriptionArgs {
            name: self.name,
            url: self.url,
            events: self.events,
            headers: self.headers,
            description: self.description,
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
            max_retries: self.max_retries,
            timeout: self.timeout,
            ..Default::default()
        }
    }
}

async fn subscriptions_command(command: SubscriptionsCommand) -> anyhow::Result<()> {
    match command {
        SubscriptionsCommand::List { list } => list_subscriptions(&list).await,
        SubscriptionsCommand::Show { id, call } => show_subscription(&id, &call).await,
        SubscriptionsCommand::Create {
            fields,
            signature,
            tenant,
            call,
        } => {
            let args = cli::SubscriptionArgs {
                tenant,
                ..fields.into_args()
            };
            let mut body = args.create_body()?;
            if let Some(signature) = signature {
                body["signature"] = signature.into();
            }
            let answer = client(&call.remote)?
                .post("/v1/subscriptions", body.to_string())
                .await?;
            show(&answer, call.json, cli::subscription_created)
        }
        SubscriptionsCommand::Update {
            id,
            fields,
            no_headers,
            no_description,
            no_rate_limit,
            call,
        } => {
            let args = cli::SubscriptionArgs {
                no_headers,
                no_description,
                no_rate_limit,
                ..fields.into_args()
            };
            let patch = args.patch()?;
            let answer = client(&call.remote)?
                .patch(&subscription_path(&id, ""), patch.to_string())
                .await?;
            show(&answer, call.json, |a| cli::subscription_updated(a, &patch))
        }
        SubscriptionsCommand::Delete { id, call } => {
            let answer = client(&call.remote)?.delete(&subscription_path(&id, "")).await?;
            show(&answer, call.json, cli::subscription_deleted)
        }
        SubscriptionsCommand::Secret { id, call } => {
            let answer = client(&call.remote)?.get(&subscription_path(&id, "/secret")).await?;
            show(&answer, call.json, cli::secret)
        }
        SubscriptionsCommand::RotateSecret { id, grace, kind, call } => {
            let body = cli::rotate_body(grace.as_deref(), kind.as_deref())?;
            let answer = client(&call.remote)?
                .post(&subscription_path(&id, "/rotate-secret"), body.to_string())
                .await?;
            show(&answer, call.json, cli::secret_rotated)
        }
        SubscriptionsCommand::Test { id, event_type, call } => {
            let body = cli::test_body(&event_type);
            let answer = client(&call.remote)?
                .post(&subscription_path(&id, "/test"), body.to_string())
                .await?;
            show(&answer, call.json, |a| cli::test_sent(&id, a))
        }
    }
}

/// `/v1/tenants/{id}`.
fn tenant_path(id: &str) -> String {
    format!("/v1/tenants/{}", cli::encode(id))
}

async fn tenants_command(command: TenantsCommand) -> anyhow::Result<()> {
    match command {
        TenantsCommand::List { call } => {
            let answer = client(&call.remote)?.get("/v1/tenants").await?;
            show_checked(&answer, call.json, cli::tenants)
        }
        TenantsCommand::Show { id, call } => {
            let answer = client(&call.remote)?.get(&tenant_path(&id)).await?;
            show_checked(&answer, call.json, cli::tenant)
        }
        TenantsCommand::Create {
            id,
            name,
            plan,
            metadata,
            call,
        } => {
            let body = cli::tenant_create_body(&id, &name, plan.as_deref(), metadata.as_deref())?;
            let answer = client(&call.remote)?.post("/v1/tenants", body.to_string()).await?;
            show_checked(&answer, call.json, |a| cli::tenant_saved(a, "created"))
        }
        TenantsCommand::Update {
            id,
            name,
            plan,
            no_plan,
            metadata,
            call,
        } => {
            let patch = cli::tenant_patch(name.as_deref(), plan.as_deref(), no_plan, metadata.as_deref())?;
            let answer = client(&call.remote)?
                .patch(&tenant_path(&id), patch.to_string())
                .await?;
            show_checked(&answer, call.json, |a| cli::tenant_saved(a, "updated"))
        }
        TenantsCommand::Delete { id, call } => {
            let answer = client(&call.remote)?.delete(&tenant_path(&id)).await?;
            show(&answer, call.json, cli::tenant_deleted)
        }
    }
}

async fn keys_command(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            tenant,
            role,
            label,
            call,
        } => {
            let (path, body) = cli::key_request(tenant.as_deref(), role.as_deref(), label.as_deref())?;
            let answer = client(&call.remote)?.post(&path, body.to_string()).await?;
            show_checked(&answer, call.json, cli::key_created)
        }
        KeysCommand::List { tenant, call } => {
            if let Some(t) = &tenant {
                cli::parse_tenant("--tenant", t)?;
            }
            let answer = client(&call.remote)?.get(&cli::keys_path(tenant.as_deref())).await?;
            show_checked(&answer, call.json, cli::keys)
        }
        KeysCommand::Revoke { key_id, tenant, call } => {
            if let Some(t) = &tenant {
                cli::parse_tenant("--tenant", t)?;
            }
            let path = format!("{}/{}", cli::keys_path(tenant.as_deref()), cli::encode(&key_id));
            let answer = client(&call.remote)?.delete(&path).await?;
            show(&answer, call.json, cli::key_revoked)
        }
    }
}

async fn event_types_command(command: EventTypesCommand) -> anyhow::Result<()> {
    match command {
        EventTypesCommand::List { call } => {
            let answer = client(&call.remote)?.get("/v1/event-types").await?;
            show_checked(&answer, call.json, cli::event_types)
        }
        EventTypesCommand::Put {
            name,
            description,
            schema,
            example,
            deprecated,
            call,
        } => {
            let schema = schema
                .as_deref()
                .map(|s| cli::parse_schema(s, |path| std::fs::read_to_string(path)))
                .transpose()?;
            let body = cli::event_type_body(description.as_deref(), schema, example.as_deref(), deprecated)?;
            let answer = client(&call.remote)?
                .put(&format!("/v1/event-types/{}", cli::encode(&name)), body.to_string())
                .await?;
            show_checked(&answer, call.json, cli::event_type_saved)
        }
        EventTypesCommand::Delete { name, call } => {
            let answer = client(&call.remote)?
                .delete(&format!("/v1/event-types/{}", cli::encode(&name)))
                .await?;
            show(&answer, call.json, |_| cli::event_type_deleted(&name))
        }
    }
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
            let scheme = if config.server.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}:{}", addr.port())
        }
        (None, None) => bail!("give --server URL or --config FILE"),
    };
    let api_key = remote
        .api_key
        .clone()
        .or_else(|| config.and_then(|c| c.server.api_keys.first().map(|k| k.expose().to_owned())));
    let client = match &remote.ca_file {
        Some(path) => ApiClient::with_ca_file(&base, api_key, path)?,
        None => ApiClient::new(&base, api_key),
    };
    Ok(client.as_cli())
}
