//! End to end, the operator verbs: the real `hookd` binary against a hookd
//! running in this process (embedded store, an API key) that delivers to a
//! real receiver, asserting on what the verbs print.

mod support;

use std::collections::BTreeSet;

use hookd::config::Config;
use serde_json::{json, Value};
use support::receiver::{Answer, Receiver, SECRET};

use support::daemon::WAIT;
const KEY: &str = "operator-key-0001";

/// hookd running in this process, with an API key.
struct Hookd {
    running: support::daemon::Hookd,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Hookd {
    type Target = support::daemon::Hookd;

    fn deref(&self) -> &support::daemon::Hookd {
        &self.running
    }
}

impl Hookd {
    /// hookd delivering `coupon.*` to the subscriptions `crm` and `flaky`
    /// at those paths of `rx`, and `extra` subscriptions (TOML).
    async fn start(rx: &Receiver, extra: &str) -> Hookd {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = format!(
            "[server]\napi_keys = [\"{KEY}\"]\n[queue]\ndata_dir = {:?}\npoll_interval = \"20ms\"\n\
             [plans.default]\nallow_http = true\nallow_private_networks = true\n[delivery]\nallow_http = true\nallow_private_networks = true\nbackoff_initial = \"100ms\"\n",
            dir.path().display().to_string()
        );
        for name in ["crm", "flaky"] {
            toml += &format!(
                "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"{}\"\nevents = [\"coupon.*\"]\nsecrets = [\"{SECRET}\"]\n",
                rx.url(name)
            );
        }
        toml += extra;
        Hookd {
            running: support::daemon::Hookd::start(Config::from_toml(&toml).unwrap()).await,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.running.stop().await;
    }

    /// Runs the real `hookd` binary with `args` against this hookd.
    async fn cli(&self, args: &[&str]) -> Run {
        self.cli_with_key(args, KEY).await
    }

    async fn cli_with_key(&self, args: &[&str], key: &str) -> Run {
        let mut run = run_binary(&[args, &["--server", &self.url, "--api-key", key]].concat()).await;
        run.args = args.join(" ");
        run
    }
}

/// What one run of the binary printed.
struct Run {
    args: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Its stdout, asserting it exited 0.
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "hookd {} failed:\n{}{}",
            self.args,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Its stdout as JSON, asserting it exited 0.
    fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("hookd {}: not JSON ({e}):\n{}", self.args, self.stdout))
    }

    /// Its stderr, asserting it exited 1.
    fn failed(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "hookd {} should fail:\n{}{}",
            self.args,
            self.stdout,
            self.stderr
        );
        &self.stderr
    }

    /// The table's rows (every line after the header), split on whitespace.
    fn rows(&self) -> Vec<Vec<String>> {
        let out = self.ok();
        let mut lines = out.lines();
        lines.next().expect("a header line");
        lines
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    }
}

fn ids(items: &Value) -> BTreeSet<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_verbs_show_and_act_on_a_running_hookd() {
    let rx = Receiver::start_with(|path, _, attempt| {
        if path == "flaky" && attempt == 1 {
            Answer::Status(503, vec![("x-reason", "warming up".into())])
        } else {
            Answer::ok()
        }
    })
    .await;
    let hookd = Hookd::start(&rx, "").await;
    for n in 1..=5 {
        let event = json!({"type": "coupon.redeemed", "id": format!("evt_{n}"), "data": {"n": n}});
        hookd.api.post("/v1/events", event.to_string()).await.unwrap();
    }
    hookd
        .wait_for("/v1/deliveries?state=delivered", "10 deliveries delivered", |v| {
            v["deliveries"].as_array().is_some_and(|d| d.len() == 10)
        })
        .await;

    // subscriptions: ID NAME TENANT STATUS SINCE(date time) DELIVERED RETRYING DEAD ...
    let subs = hookd.cli(&["subscriptions"]).await;
    assert!(subs.ok().starts_with("ID "), "{}", subs.stdout);
    let rows = subs.rows();
    assert_eq!(rows.len(), 2, "{}", subs.stdout);
    for row in &rows {
        // ID NAME TENANT STATUS SINCE DELIVERED RETRYING DEAD LAST SUCCESS(date time) LAST FAILURE REASON
        assert_eq!(
            row[0], row[1],
            "a config subscription's id is its name: {}",
            subs.stdout
        );
        assert_eq!(row[2], "-", "the operator's: {}", subs.stdout);
        assert_eq!(row[3], "active", "{}", subs.stdout);
        assert_eq!(row[4], "-", "never disabled: {}", subs.stdout);
        assert_eq!(
            &row[5..8],
            ["5", "0", "0"],
            "delivered, retrying, dead: {}",
            subs.stdout
        );
    }
    let flaky = rows.iter().find(|r| r[0] == "flaky").expect("flaky listed");
    assert_eq!(
        flaky[8..].len(),
        5,
        "a last success, a last failure (its 503s), no reason: {flaky:?}"
    );
    assert_eq!(flaky[12], "-");
    let crm = rows.iter().find(|r| r[0] == "crm").expect("crm listed");
    assert_eq!(&crm[10..], ["-", "-"], "never failed, no reason: {crm:?}");
    let crm = hookd.cli(&["subscriptions", "crm", "--json"]).await.json();
    assert_eq!(crm["name"], "crm");
    assert_eq!(crm["counts"]["delivered"], 5);
    let block = hookd.cli(&["subscriptions", "crm"]).await;
    assert!(
        block
            .ok()
            .lines()
            .any(|l| l.starts_with("status") && l.ends_with(" active")),
        "{}",
        block.stdout
    );

    // deliveries: a table and the JSON answer agree.
    let table = hookd.cli(&["deliveries", "--subscription", "crm"]).await;
    let rows = table.rows();
    assert_eq!(rows.len(), 5, "{}", table.stdout);
    for row in &rows {
        // DELIVERY EVENT TYPE SUBSCRIPTION STATE ATTEMPTS CREATED(date time) LAST
        assert!(row[0].starts_with("dlv_"), "{row:?}");
        assert_eq!(&row[2..6], ["coupon.redeemed", "crm", "delivered", "1"], "{row:?}");
        assert_eq!(row[8], "204", "{row:?}");
    }
    let table_ids: BTreeSet<String> = rows.iter().map(|r| r[0].clone()).collect();
    let listed = hookd
        .cli(&["deliveries", "--subscription", "crm", "--json"])
        .await
        .json();
    assert_eq!(ids(&listed["deliveries"]), table_ids);
    assert_eq!(listed["next_cursor"], Value::Null);

    // Filters: state, and times relative or RFC 3339.
    let flaky_delivered = hookd
        .cli(&[
            "deliveries",
            "--subscription",
            "flaky",
            "--state",
            "delivered",
            "--from",
            "1h",
        ])
        .await;
    assert_eq!(flaky_delivered.rows().len(), 5, "{}", flaky_delivered.stdout);
    assert!(flaky_delivered.rows().iter().all(|r| r[3] == "flaky" && r[5] == "2"));
    let none = hookd.cli(&["deliveries", "--to", "1h"]).await;
    assert_eq!(none.rows().len(), 0, "{}", none.stdout);
    let none = hookd.cli(&["deliveries", "--from", "2999-01-01T00:00:00Z"]).await;
    assert_eq!(none.rows().len(), 0, "{}", none.stdout);
    let retrying = hookd.cli(&["deliveries", "--state", "retrying", "--json"]).await.json();
    assert_eq!(retrying["deliveries"], json!([]));

    // Pages: the cursor hint on stderr, followed by hand or by --all.
    let first = hookd
        .cli(&["deliveries", "--subscription", "crm", "--limit", "2"])
        .await;
    assert_eq!(first.rows().len(), 2);
    let cursor = first
        .stderr
        .trim()
        .strip_prefix("more: --cursor ")
        .unwrap_or_else(|| panic!("a cursor hint: {}", first.stderr))
        .trim_matches('\'')
        .to_owned();
    let second = hookd
        .cli(&[
            "deliveries",
            "--subscription",
            "crm",
            "--limit",
            "2",
            "--cursor",
            &cursor,
        ])
        .await;
    let seen: BTreeSet<String> = first
        .rows()
        .iter()
        .chain(&second.rows())
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        seen.len(),
        4,
        "the second page follows the first:\n{}{}",
        first.stdout,
        second.stdout
    );
    let all = hookd
        .cli(&["deliveries", "--subscription", "crm", "--limit", "2", "--all"])
        .await;
    assert_eq!(all.rows().len(), 5, "{}", all.stdout);
    assert!(!all.stderr.contains("more:"), "{}", all.stderr);
    let all_ids: BTreeSet<String> = all.rows().iter().map(|r| r[0].clone()).collect();
    assert_eq!(all_ids, table_ids);
    let all_json = hookd
        .cli(&["deliveries", "--subscription", "crm", "--limit", "2", "--all", "--json"])
        .await
        .json();
    assert_eq!(ids(&all_json["deliveries"]), table_ids);

    // attempts: the 503 then the 204 of evt_1 to flaky.
    let flaky_1 = hookd
        .cli(&["deliveries", "--subscription", "flaky", "--json"])
        .await
        .json()["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == "evt_1")
        .expect("evt_1 to flaky")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let attempts = hookd.cli(&["attempts", &flaky_1]).await;
    let lines: Vec<&str> = attempts.ok().lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "{flaky_1}  coupon.redeemed evt_1 -> flaky: delivered, 2 attempts, created "
        )),
        "{}",
        attempts.stdout
    );
    assert!(lines[2].starts_with("#  STARTED"), "{}", attempts.stdout);
    let first_attempt: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(first_attempt[0], "1");
    assert!(lines[3].contains(" 503 ") && lines[3].contains("status") && lines[3].contains("endpoint answered 503"));
    assert!(
        lines[4].starts_with("2 ") && lines[4].contains(" 204 "),
        "{}",
        attempts.stdout
    );
    assert_eq!(lines.len(), 5, "{}", attempts.stdout);
    let verbose = hookd.cli(&["attempts", &flaky_1, "-v"]).await;
    let out = verbose.ok();
    assert!(out.contains("\nattempt 1 at "), "{out}");
    assert!(out.contains("    x-reason: warming up\n"), "{out}");
    assert!(out.contains("    webhook-id: evt_1\n"), "{out}");
    assert!(out.contains("    webhook-signature: "), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    let attempts_json = hookd.cli(&["attempts", &flaky_1, "--json"]).await.json();
    assert_eq!(attempts_json["attempts"].as_array().unwrap().len(), 2);

    // event: its two deliveries and where they stand.
    let event = hookd.cli(&["event", "evt_1"]).await;
    let out = event.ok();
    assert!(
        out.starts_with("event evt_1 (coupon.redeemed): 2 deliveries\n"),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out.lines().skip(3).map(|l| l.split_whitespace().collect()).collect();
    let mut stands: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[1], r[2], r[3])).collect();
    stands.sort();
    assert_eq!(
        stands,
        [("crm", "delivered", "1"), ("flaky", "delivered", "2")],
        "{out}"
    );
    assert!(rows.iter().any(|r| r[0] == flaky_1), "{out}");

    // disable, then enable: the delivery made meanwhile is parked, then resumed.
    let disabled = hookd.cli(&["disable", "crm", "--reason", "maintenance window"]).await;
    assert_eq!(
        disabled.ok(),
        "crm disabled (maintenance window); its deliveries are parked until `hookd enable crm`\n"
    );
    let block = hookd.cli(&["subscriptions", "crm"]).await;
    assert!(
        block.ok().contains("disabled (maintenance window)\n"),
        "{}",
        block.stdout
    );
    let again = hookd.cli(&["disable", "crm"]).await;
    assert_eq!(again.ok(), "crm was already disabled\n");
    let event = json!({"type": "coupon.redeemed", "id": "evt_6", "data": {"n": 6}});
    hookd.api.post("/v1/events", event.to_string()).await.unwrap();
    hookd
        .wait_for("/v1/deliveries?subscription=crm&state=parked", "evt_6 parked", |v| {
            v["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
    let parked = hookd
        .cli(&["deliveries", "--subscription", "crm", "--state", "parked"])
        .await;
    assert_eq!(parked.rows().len(), 1);
    assert_eq!(parked.rows()[0][1], "evt_6");
    let enabled = hookd.cli(&["enable", "crm"]).await;
    assert_eq!(enabled.ok(), "crm enabled; 1 parked delivery resumed\n");
    rx.wait_for(WAIT, "evt_6 at crm", |a| {
        a.iter().any(|a| a.path == "crm" && a.id == "evt_6")
    })
    .await;

    // Errors: hookd's answer, exit code 1.
    let unknown = hookd.cli(&["event", "evt_unknown"]).await;
    assert!(
        unknown
            .failed()
            .starts_with("error: hookd answered 404 Not Found: no record of event evt_unknown"),
        "{}",
        unknown.stderr
    );
    let bad_state = hookd.cli(&["deliveries", "--state", "done"]).await;
    assert!(
        bad_state
            .failed()
            .starts_with("error: hookd answered 400 Bad Request: `state`"),
        "{}",
        bad_state.stderr
    );
    let no_sub = hookd.cli(&["enable", "nobody"]).await;
    assert!(
        no_sub
            .failed()
            .starts_with("error: hookd answered 404 Not Found: no subscription named `nobody`"),
        "{}",
        no_sub.stderr
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_is_a_clear_error() {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(&rx, "").await;
    for verb in [&["subscriptions"][..], &["deliveries", "--all"], &["enable", "crm"]] {
        let run = hookd.cli_with_key(verb, "not-the-key").await;
        let stderr = run.failed();
        assert_eq!(
            stderr,
            "error: hookd answered 401 Unauthorized: the API key is not valid\n\
             hint: give the API key with --api-key, HOOKD_API_KEY or the config's server.api_keys\n",
            "{verb:?}"
        );
        assert_eq!(run.stdout, "");
    }
    // Checked before anything is sent.
    let run = hookd
        .cli(&["replay", "--subscription", "crm", "--event", "evt_1"])
        .await;
    assert_eq!(
        run.failed(),
        "error: replay needs exactly one of DELIVERY_ID, --subscription NAME or --event ID \
         (given: --subscription crm, --event evt_1)\n"
    );
    let run = hookd.cli(&["deliveries", "--from", "yesterday"]).await;
    assert!(
        run.failed()
            .starts_with("error: --from `yesterday`: give an RFC 3339 time"),
        "{}",
        run.stderr
    );
    hookd.stop().await;
}

/// hookd with an extra subscription `orders` (`order.*`) that gives up
/// after the first attempt, and a receiver whose `orders` endpoint fails
/// until told otherwise.
async fn with_failing_orders() -> (Receiver, Hookd) {
    let rx = Receiver::start_with(|path, _, _| {
        if path == "orders" {
            Answer::Status(500, vec![])
        } else {
            Answer::ok()
        }
    })
    .await;
    let orders = format!(
        "\n[[subscriptions]]\nname = \"orders\"\nurl = \"{}\"\nevents = [\"order.*\"]\nsecrets = [\"{SECRET}\"]\nmax_retries = 0\n",
        rx.url("orders")
    );
    let hookd = Hookd::start(&rx, &orders).await;
    (rx, hookd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lists_and_replay_revives_a_dead_delivery() {
    let (rx, hookd) = with_failing_orders().await;
    let event = json!({"type": "order.placed", "id": "evt_order", "data": {"total": 12}});
    hookd.api.post("/v1/events", event.to_string()).await.unwrap();
    let dead = hookd
        .wait_for("/v1/deliveries/dead", "a dead delivery", |v| {
            v["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
    let id = dead["deliveries"][0]["id"].as_str().unwrap().to_owned();

    let table = hookd.cli(&["dead"]).await;
    let rows = table.rows();
    assert_eq!(rows.len(), 1, "{}", table.stdout);
    // DELIVERY SUBSCRIPTION EVENT TYPE CREATED(date time) ATTEMPTS LAST ERROR
    assert_eq!(
        &rows[0][..3],
        [id.as_str(), "orders", "order.placed"],
        "{}",
        table.stdout
    );
    assert_eq!(rows[0][5], "1");
    assert!(
        table.stdout.contains("endpoint answered 500 Internal Server Error"),
        "{}",
        table.stdout
    );
    assert_eq!(hookd.cli(&["dead", "--json"]).await.json(), dead);

    rx.answer_with(|_, _, _| Answer::ok());
    let replayed = hookd.cli(&["replay", &id]).await;
    assert_eq!(replayed.ok(), format!("{id} replayed: due now, attempts reset\n"));
    rx.wait_for(WAIT, "the replayed delivery", |a| {
        a.iter().any(|a| a.path == "orders" && a.attempt == 2)
    })
    .await;
    let again = hookd.cli(&["replay", &id]).await;
    assert!(
        again.failed().starts_with(&format!(
            "error: hookd answered 409 Conflict: delivery {id} is not dead"
        )),
        "{}",
        again.stderr
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_bulk_replays_from_the_cli() {
    let (rx, hookd) = with_failing_orders().await;
    for n in 0..4 {
        let event = json!({"type": "order.placed", "id": format!("evt_bulk_{n}"), "data": {"n": n}});
        hookd.api.post("/v1/events", event.to_string()).await.unwrap();
    }
    let dead = hookd
        .wait_for("/v1/deliveries/dead", "4 dead deliveries", |v| {
            v["deliveries"].as_array().is_some_and(|d| d.len() == 4)
        })
        .await;
    let first = dead["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == "evt_bulk_0")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    rx.answer_with(|_, _, _| Answer::ok());

    let retried = hookd.cli(&["retry", &first]).await;
    assert_eq!(
        retried.ok(),
        format!("{first} was dead: replayed, due now, attempts reset\n")
    );
    rx.wait_for(WAIT, "the retried delivery", |a| {
        a.iter().any(|a| a.id == "evt_bulk_0" && a.attempt == 2)
    })
    .await;

    let bulk = hookd.cli(&["replay", "--subscription", "orders", "--from", "1h"]).await;
    assert_eq!(
        bulk.ok(),
        "orders: 3 deliveries replayed, 0 skipped, 3 scanned\n",
        "{}",
        bulk.stderr
    );
    let arrivals = rx
        .wait_for(WAIT, "the 3 replayed deliveries", |a| {
            (1..4).all(|n| {
                let id = format!("evt_bulk_{n}");
                a.iter().any(|a| a.id == id && a.attempt == 2)
            })
        })
        .await;
    assert!(arrivals.iter().all(|a| a.verified));
    let again = hookd.cli(&["replay", "--subscription", "orders"]).await;
    assert_eq!(again.ok(), "orders: 0 deliveries replayed, 0 skipped, 0 scanned\n");

    // The whole event, to every subscription it went to, once per key.
    let event = hookd
        .cli(&["replay", "--event", "evt_bulk_1", "--key", "restore-1"])
        .await;
    let out = event.ok();
    assert!(out.starts_with("event evt_bulk_1 replayed: 1 new delivery\n"), "{out}");
    assert!(out.contains("orders"), "{out}");
    rx.wait_for(WAIT, "evt_bulk_1 a third time", |a| {
        a.iter().any(|a| a.id == "evt_bulk_1" && a.attempt == 3)
    })
    .await;
    let repeated = hookd
        .cli(&["replay", "--event", "evt_bulk_1", "--key", "restore-1"])
        .await;
    assert_eq!(
        repeated.ok(),
        "event evt_bulk_1: this replay key was used before; nothing replayed\n"
    );
    let both = hookd
        .cli(&["replay", "--event", "evt_bulk_1", "--subscription", "orders"])
        .await;
    assert!(both.failed().starts_with("error: "), "{}", both.stderr);
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_counted_as_the_cli_source() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rx = Receiver::start().await;
    let hookd = Hookd::start(&rx, "").await;
    let sent = hookd
        .cli(&["send", "--type", "coupon.redeemed", "--data", r#"{"code":"X"}"#])
        .await;
    assert!(sent.ok().contains("\"duplicate\":false"), "{}", sent.stdout);
    let addr = hookd.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(
        text.contains(r#"hookd_events_ingested_total{source="cli",type="coupon.redeemed"} 1"#),
        "{text}"
    );
    hookd.stop().await;
}

/// The line of a `keys create` or `subscriptions create` output that holds
/// the key or secret: the one indented by four spaces.
fn set_apart(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("    "))
        .unwrap_or_else(|| panic!("a line set apart in:\n{out}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_keys_and_subscriptions_from_the_cli() {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(&rx, "\n[plans.free]\nmax_subscriptions = 5\n").await;

    // Tenants: create, list, show, update (a merge patch), as JSON too.
    let made = hookd
        .cli(&[
            "tenants",
            "create",
            "acme",
            "--name",
            "Acme Inc.",
            "--plan",
            "free",
            "--metadata",
            r#"{"region": "eu"}"#,
        ])
        .await;
    assert_eq!(made.ok(), "tenant acme (Acme Inc., plan free) created\n");
    let globex = hookd
        .cli(&["tenants", "create", "globex", "--name", "Globex", "--json"])
        .await
        .json();
    assert_eq!(globex["id"], "globex");
    assert_eq!(globex["source"], "api");
    let listed = hookd.cli(&["tenants", "list"]).await;
    assert!(listed.ok().starts_with("ID      NAME "), "{}", listed.stdout);
    let tenant_ids: Vec<String> = listed.rows().iter().map(|r| r[0].clone()).collect();
    assert_eq!(tenant_ids, ["acme", "globex"], "{}", listed.stdout);
    let shown = hookd.cli(&["tenants", "show", "acme"]).await;
    assert!(shown.ok().contains("plan           free\n"), "{}", shown.stdout);
    let updated = hookd
        .cli(&[
            "tenants",
            "update",
            "acme",
            "--no-plan",
            "--metadata",
            r#"{"tier": "gold"}"#,
        ])
        .await;
    assert_eq!(updated.ok(), "tenant acme (Acme Inc.) updated\n");
    let acme = hookd.cli(&["tenants", "show", "acme", "--json"]).await.json();
    assert_eq!(acme["plan"], Value::Null);
    assert_eq!(acme["metadata"], json!({"region": "eu", "tier": "gold"}));
    let again = hookd.cli(&["tenants", "create", "acme", "--name", "Acme"]).await;
    assert!(
        again.failed().starts_with("error: hookd answered 409 Conflict: "),
        "{}",
        again.stderr
    );

    // A tenant key, printed once; it works as --api-key.
    let key_run = hookd
        .cli(&["keys", "create", "--tenant", "acme", "--label", "cli-test"])
        .await;
    let out = key_run.ok();
    assert!(out.contains("it will not be shown again"), "{out}");
    let key = set_apart(out);
    assert!(key.starts_with("hk_"), "{out}");
    let key_id = out.split_whitespace().next().unwrap().to_owned();
    assert!(key_id.starts_with("key_"), "{out}");

    let created = hookd
        .cli_with_key(
            &[
                "subscriptions",
                "create",
                "--name",
                "orders",
                "--url",
                &rx.url("orders"),
                "--event",
                "order.*",
                "--event",
                "coupon.redeemed",
                "--header",
                "x-team=orders",
                "--rate-limit",
                "5/10",
                "--timeout",
                "5s",
            ],
            &key,
        )
        .await;
    let out = created.ok();
    let sub_id = out
        .strip_prefix("subscription ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("an id: {out}"))
        .to_owned();
    assert!(sub_id.starts_with("sub_"), "{out}");
    assert!(
        out.starts_with(&format!("subscription {sub_id} (orders) made for tenant acme\n")),
        "{out}"
    );
    let secret = set_apart(out);
    assert!(secret.starts_with("whsec_"), "{out}");
    rx.trust("orders", &[&secret]);

    // The admin makes one for globex; the JSON answer carries the secret.
    let g = hookd
        .cli(&[
            "subscriptions",
            "create",
            "--tenant",
            "globex",
            "--name",
            "g-orders",
            "--url",
            &rx.url("g-orders"),
            "--event",
            "order.*",
            "--json",
        ])
        .await
        .json();
    assert_eq!(g["tenant"], "globex");
    assert!(g["secret"].as_str().unwrap().starts_with("whsec_"), "{g}");
    let g_id = g["id"].as_str().unwrap().to_owned();

    // Listing: a tenant key sees only its own; the admin all, page by page.
    let own = hookd.cli_with_key(&["subscriptions"], &key).await;
    let rows = own.rows();
    assert_eq!(rows.len(), 1, "{}", own.stdout);
    assert_eq!(
        &rows[0][..4],
        [sub_id.as_str(), "orders", "acme", "active"],
        "{}",
        own.stdout
    );
    let page = hookd.cli(&["subscriptions", "--limit", "1"]).await;
    assert_eq!(page.rows().len(), 1, "{}", page.stdout);
    assert!(page.stderr.starts_with("more: --cursor "), "{}", page.stderr);
    let all = hookd.cli(&["subscriptions", "--limit", "1", "--all"]).await;
    let mut names: Vec<String> = all.rows().iter().map(|r| r[1].clone()).collect();
    names.sort();
    assert_eq!(names, ["crm", "flaky", "g-orders", "orders"], "{}", all.stdout);
    assert!(!all.stderr.contains("more:"), "{}", all.stderr);
    let all_json = hookd
        .cli(&["subscriptions", "list", "--limit", "1", "--all", "--json"])
        .await
        .json();
    assert_eq!(all_json["subscriptions"].as_array().unwrap().len(), 4);
    let globex_only = hookd.cli(&["subscriptions", "--tenant", "globex"]).await;
    assert_eq!(globex_only.rows().len(), 1, "{}", globex_only.stdout);
    assert_eq!(globex_only.rows()[0][0], g_id);

    // The printed secret signs what is delivered.
    hookd
        .send(json!({"type": "order.placed", "id": "evt_acme_1", "tenant": "acme", "data": {}}))
        .await;
    let arrived = rx
        .wait_for(WAIT, "acme's order at orders", |a| a.iter().any(|a| a.path == "orders"))
        .await;
    let arrival = arrived.iter().find(|a| a.path == "orders").unwrap();
    assert!(arrival.verified, "signed with the printed secret");
    assert_eq!(arrival.headers["x-team"], "orders");

    // Update: only the fields given; show it; the secret again.
    let changed = hookd
        .cli_with_key(
            &[
                "subscriptions",
                "update",
                &sub_id,
                "--description",
                "acme's orders",
                "--no-rate-limit",
                "--max-retries",
                "2",
            ],
            &key,
        )
        .await;
    assert_eq!(
        changed.ok(),
        format!("subscription {sub_id} (orders) updated: description, max_retries, rate_limit\n")
    );
    let one = hookd
        .cli_with_key(&["subscriptions", "show", &sub_id, "--json"], &key)
        .await
        .json();
    assert_eq!(one["description"], "acme's orders");
    assert_eq!(one["rate_limit"], Value::Null);
    assert_eq!(one["max_retries"], 2);
    assert_eq!(one["url"], rx.url("orders"), "unchanged");
    assert_eq!(one["headers"], json!(["x-team"]));
    let block = hookd.cli_with_key(&["subscriptions", &sub_id], &key).await;
    assert!(block.ok().contains("tenant                acme\n"), "{}", block.stdout);
    assert!(block.ok().contains("timeout               5s\n"), "{}", block.stdout);
    let shown_secret = hookd.cli_with_key(&["subscriptions", "secret", &sub_id], &key).await;
    assert_eq!(shown_secret.ok(), format!("{secret}\n"));
    let others = hookd.cli_with_key(&["subscriptions", "show", &g_id], &key).await;
    assert!(
        others.failed().starts_with("error: hookd answered 404 Not Found: "),
        "another tenant's is unknown: {}",
        others.stderr
    );

    // Delete.
    let deleted = hookd.cli_with_key(&["subscriptions", "delete", &sub_id], &key).await;
    assert_eq!(
        deleted.ok(),
        format!("subscription {sub_id} deleted; its pending deliveries are cancelled\n")
    );
    let gone = hookd.cli_with_key(&["subscriptions", "show", &sub_id], &key).await;
    assert!(
        gone.failed().starts_with("error: hookd answered 404 Not Found: "),
        "{}",
        gone.stderr
    );
    assert_eq!(hookd.cli_with_key(&["subscriptions"], &key).await.rows().len(), 0);

    // Keys: listed (never shown), a producer key of no tenant, revoked.
    let keys = hookd.cli(&["keys", "list", "--tenant", "acme"]).await;
    let rows = keys.rows();
    assert_eq!(rows.len(), 1, "{}", keys.stdout);
    assert_eq!(
        &rows[0][..4],
        [key_id.as_str(), "tenant", "acme", "cli-test"],
        "{}",
        keys.stdout
    );
    assert!(!keys.stdout.contains(&key), "{}", keys.stdout);
    let producer = hookd
        .cli(&["keys", "create", "--role", "producer", "--label", "feeder", "--json"])
        .await
        .json();
    assert_eq!(producer["role"], "producer");
    assert_eq!(producer["tenant"], Value::Null);
    let producer_id = producer["id"].as_str().unwrap().to_owned();
    let listed = hookd.cli(&["keys", "list", "--json"]).await.json();
    assert_eq!(ids(&listed["keys"]), BTreeSet::from([producer_id.clone()]));
    let revoked = hookd.cli(&["keys", "revoke", &producer_id]).await;
    assert_eq!(
        revoked.ok(),
        format!("key {producer_id} revoked: it stops working within a second\n")
    );
    let revoked = hookd.cli(&["keys", "revoke", &key_id, "--tenant", "acme"]).await;
    assert!(revoked.ok().starts_with(&format!("key {key_id} revoked")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let run = hookd.cli_with_key(&["subscriptions"], &key).await;
        if run.code == Some(1) {
            assert!(
                run.stderr.starts_with("error: hookd answered 401 Unauthorized: "),
                "{}",
                run.stderr
            );
            assert!(run.stderr.contains("hint: give the API key"), "{}", run.stderr);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the revoked key still works");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Deleting a tenant takes its subscriptions with it.
    let deleted = hookd.cli(&["tenants", "delete", "globex"]).await;
    assert_eq!(
        deleted.ok(),
        format!(
            "tenant globex deleted with 1 subscription: {g_id} (their pending deliveries cancelled) \
             and its keys revoked\n"
        )
    );
    let left = hookd.cli(&["tenants", "list", "--json"]).await.json();
    assert_eq!(ids(&left["tenants"]), BTreeSet::from(["acme".to_string()]));
    assert_eq!(hookd.cli(&["subscriptions"]).await.rows().len(), 2, "crm and flaky");
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tenant_key_and_subscription_arguments_are_clear() {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(&rx, "").await;
    let url = rx.url("x");
    let cases: [(&[&str], &str); 8] = [
        (
            &[
                "subscriptions",
                "create",
                "--tenant",
                "acme",
                "--name",
                "x",
                "--url",
                &url,
                "--event",
                "a.b",
                "--header",
                "x-team",
            ],
            "error: --header `x-team`: write NAME=VALUE, like --header x-team=billing\n",
        ),
        (
            &["subscriptions", "create", "--name", "x"],
            "error: a new subscription needs --name, --url and --event (missing: --url, --event)\n",
        ),
        (
            &["subscriptions", "update", "sub_1", "--rate-limit", "lots"],
            "error: --rate-limit `lots`: write PER_SECOND or PER_SECOND/BURST, like 10 or 0.5/2 or 10/20; \
             the rate is a number above 0\n",
        ),
        (
            &["subscriptions", "update", "sub_1"],
            "error: nothing to change: give at least one of --name, --url, --event, --header, --no-header, \
             --description, --no-description, --rate-limit, --no-rate-limit, --max-in-flight, --max-retries, \
             --timeout\n",
        ),
        (
            &["subscriptions", "rotate-secret", "sub_1", "--grace", "a while"],
            "error: --grace `a while`: give a duration above zero, like 500ms, 5s, 24h\n",
        ),
        (
            &["keys", "create", "--tenant", "acme", "--role", "admin"],
            "error: --role `admin`: an admin key belongs to no tenant: leave out --tenant\n",
        ),
        (
            &["tenants", "create", "acme", "--name", "Acme", "--metadata", "[]"],
            "error: --metadata `[]`: give a JSON object, like {\"region\": \"eu\"}\n",
        ),
        (
            &["tenants", "update", "acme"],
            "error: nothing to change: give at least one of --name, --plan, --no-plan, --metadata\n",
        ),
    ];
    for (args, expected) in cases {
        let run = hookd.cli(args).await;
        assert_eq!(run.failed(), expected, "{args:?}");
        assert_eq!(run.stdout, "");
    }
    // hookd's own refusals: its message, exit 1.
    let admin_sub = hookd
        .cli(&[
            "subscriptions",
            "create",
            "--name",
            "x",
            "--url",
            &url,
            "--event",
            "a.b",
        ])
        .await;
    assert!(
        admin_sub
            .failed()
            .starts_with("error: hookd answered 422 Unprocessable Entity: tenant: an admin key must name the tenant"),
        "{}",
        admin_sub.stderr
    );
    let no_tenant = hookd.cli(&["tenants", "show", "nobody"]).await;
    assert_eq!(
        no_tenant.failed(),
        "error: hookd answered 404 Not Found: tenant `nobody` does not exist\n"
    );
    // A config subscription is read-only here.
    let read_only = hookd.cli(&["subscriptions", "delete", "crm"]).await;
    assert!(
        read_only.failed().starts_with("error: hookd answered 409 Conflict: "),
        "{}",
        read_only.stderr
    );
    hookd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_types_secret_rotation_and_test_events_from_the_cli() {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(&rx, "").await;
    hookd.cli(&["tenants", "create", "acme", "--name", "Acme"]).await.ok();

    // The catalogue: a type with a schema and an example, one from a file.
    let schema = r#"{"type": "object", "required": ["code"]}"#;
    let put = hookd
        .cli(&[
            "event-types",
            "put",
            "coupon.redeemed",
            "--description",
            "A coupon was redeemed",
            "--schema",
            schema,
            "--example",
            r#"{"code": "SPRING10"}"#,
        ])
        .await;
    assert_eq!(
        put.ok(),
        "event type coupon.redeemed saved, with a schema, with an example\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stamp.json");
    std::fs::write(&file, r#"{"type": "object"}"#).unwrap();
    let put = hookd
        .cli(&[
            "event-types",
            "put",
            "stamp.old",
            "--schema",
            file.to_str().unwrap(),
            "--deprecated",
        ])
        .await;
    assert_eq!(put.ok(), "event type stamp.old saved (deprecated), with a schema\n");
    let bad = hookd
        .cli(&[
            "event-types",
            "put",
            "coupon.bad",
            "--schema",
            schema,
            "--example",
            "{}",
        ])
        .await;
    assert!(
        bad.failed()
            .starts_with("error: hookd answered 422 Unprocessable Entity: "),
        "{}",
        bad.stderr
    );
    let listed = hookd.cli(&["event-types", "list"]).await;
    let rows = listed.rows();
    assert_eq!(rows.len(), 2, "{}", listed.stdout);
    // NAME DEPRECATED SCHEMA EXAMPLE SOURCE DESCRIPTION
    assert_eq!(
        &rows[0][..6],
        ["coupon.redeemed", "-", "yes", "yes", "api", "A"],
        "{}",
        listed.stdout
    );
    assert_eq!(
        &rows[1][..6],
        ["stamp.old", "yes", "yes", "-", "api", "-"],
        "{}",
        listed.stdout
    );
    let json = hookd.cli(&["event-types", "list", "--json"]).await.json();
    assert_eq!(json["event_types"][0]["example"], json!({"code": "SPRING10"}));

    // A test event reaches the subscription, signed with its secret.
    let sub = hookd
        .cli(&[
            "subscriptions",
            "create",
            "--tenant",
            "acme",
            "--name",
            "coupons",
            "--url",
            &rx.url("coupons"),
            "--event",
            "coupon.redeemed",
            "--json",
        ])
        .await
        .json();
    let id = sub["id"].as_str().unwrap().to_owned();
    let first = sub["secret"].as_str().unwrap().to_owned();
    rx.trust("coupons", &[&first]);
    let sent = hookd
        .cli(&["subscriptions", "test", &id, "--type", "coupon.redeemed"])
        .await;
    let out = sent.ok();
    assert!(out.starts_with("test event "), "{out}");
    assert!(out.contains(&format!(" sent to {id}: delivery dlv_")), "{out}");
    let arrivals = rx
        .wait_for(WAIT, "the test event", |a| a.iter().any(|a| a.path == "coupons"))
        .await;
    let arrival = arrivals.iter().find(|a| a.path == "coupons").unwrap();
    assert!(arrival.verified);
    assert_eq!(arrival.json()["data"], json!({"code": "SPRING10"}));

    // Rotation: the new secret is printed; both sign during the grace.
    let rotated = hookd
        .cli(&["subscriptions", "rotate-secret", &id, "--grace", "1h"])
        .await;
    let out = rotated.ok();
    let second = set_apart(out);
    assert!(second.starts_with("whsec_") && second != first, "{out}");
    assert!(out.contains("the previous secret keeps signing too until "), "{out}");
    let secret = hookd.cli(&["subscriptions", "secret", &id]).await;
    assert_eq!(
        secret.ok(),
        format!("{second}\nalso signing until their grace ends: {first}\n")
    );
    rx.trust("coupons", &[&second]);
    hookd
        .cli(&["subscriptions", "test", &id, "--type", "coupon.redeemed", "--json"])
        .await
        .json();
    let arrivals = rx
        .wait_for(WAIT, "the second test event", |a| {
            a.iter().filter(|a| a.path == "coupons").count() == 2
        })
        .await;
    assert!(
        arrivals.iter().filter(|a| a.path == "coupons").all(|a| a.verified),
        "the second is verified with the new secret alone"
    );
    let rotated = hookd
        .cli(&["subscriptions", "rotate-secret", &id, "--json"])
        .await
        .json();
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));

    // hookd's refusals; then the catalogue shrinks.
    let wrong = hookd.cli(&["subscriptions", "test", &id, "--type", "stamp.old"]).await;
    assert!(
        wrong
            .failed()
            .starts_with("error: hookd answered 422 Unprocessable Entity: type: "),
        "{}",
        wrong.stderr
    );
    let deleted = hookd.cli(&["event-types", "delete", "stamp.old"]).await;
    assert_eq!(deleted.ok(), "event type stamp.old deleted\n");
    let left = hookd.cli(&["event-types", "list", "--json"]).await.json();
    assert_eq!(left["event_types"].as_array().unwrap().len(), 1);
    let gone = hookd.cli(&["event-types", "delete", "stamp.old"]).await;
    assert!(
        gone.failed().starts_with("error: hookd answered 404 Not Found: "),
        "{}",
        gone.stderr
    );
    hookd.stop().await;
}

/// `hookd config check` shows where things go but no credential: custom
/// header values, plugin config values, URL userinfo and query values of
/// endpoint and Redis URLs are `[redacted]`; names and hosts stay.
#[test]
fn config_check_redacts_header_plugin_and_url_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("p.wasm");
    std::fs::write(&plugin, b"").unwrap();
    let path = dir.path().join("hookd.toml");
    std::fs::write(
        &path,
        format!(
            "[queue]\nredis_url = \"redis://hookd:redis-pass-1@127.0.0.1:6379/0\"\n\
             [[subscriptions]]\nname = \"crm\"\nurl = \"https://crm-user:url-pass-2@crm.example.com/in?token=query-tok-3&v=2\"\n\
             events = [\"*\"]\nsecrets = [\"{SECRET}\"]\nheaders = {{ \"x-api-key\" = \"header-key-4\" }}\n\
             [subscriptions.plugin]\npath = {:?}\nconfig = {{ api_token = \"plugin-tok-5\" }}\n",
            plugin.display().to_string()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .env_remove("HOOKD_CONFIG")
        .output()
        .expect("cannot run the hookd binary");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let shown = format!("{stdout}\n{stderr}");
    for secret in [
        "redis-pass-1",
        "url-pass-2",
        "query-tok-3",
        "header-key-4",
        "plugin-tok-5",
        "crm-user",
    ] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    for kept in [
        "crm.example.com/in?token=",
        "x-api-key",
        "api_token",
        "127.0.0.1:6379",
        "v=",
    ] {
        assert!(shown.contains(kept), "{kept} missing:\n{shown}");
    }
}

/// `hookd config check` with the log in PostgreSQL prints the TLS mode in
/// force and why (the default follows the URL's host), and refuses a
/// mode it does not know or a CA file without a certificate, naming the
/// key.
#[test]
fn config_check_shows_the_postgres_tls_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let check = |history: &str| {
        let path = dir.path().join("hookd.toml");
        std::fs::write(&path, format!("[history]\n{history}\n")).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
            .args(["config", "check", "--config"])
            .arg(&path)
            .env_remove("HOOKD_CONFIG")
            .output()
            .expect("cannot run the hookd binary");
        let shown = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!shown.contains("pg-pass-3"), "{shown}");
        (output.status.success(), shown)
    };
    let (ok, shown) = check("postgres_url = \"postgres://hookd:pg-pass-3@db.internal/hookd\"");
    assert!(ok, "{shown}");
    assert!(
        shown.contains("# history.postgres_tls in force: verify-full (history.postgres_tls unset: the default for a host not on loopback)"),
        "{shown}"
    );
    let (ok, shown) = check("postgres_url = \"postgres://hookd:pg-pass-3@127.0.0.1/hookd\"");
    assert!(
        ok && shown.contains("# history.postgres_tls in force: disable ("),
        "{shown}"
    );
    let (ok, shown) =
        check("postgres_url = \"postgres://hookd:pg-pass-3@db.internal/hookd\"\npostgres_tls = \"require\"");
    assert!(ok && shown.contains("postgres_tls = \"require\""), "{shown}");

    let (ok, shown) = check("postgres_url = \"postgres://hookd@db.internal/hookd\"\npostgres_tls = \"sometimes\"");
    assert!(!ok && shown.contains("history.postgres_tls"), "{shown}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let (ok, shown) = check(&format!(
        "postgres_url = \"postgres://hookd@db.internal/hookd\"\npostgres_ca_file = {:?}",
        empty.display().to_string()
    ));
    assert!(
        !ok && shown.contains("history.postgres_ca_file") && shown.contains("no `BEGIN CERTIFICATE`"),
        "{shown}"
    );
    let (ok, shown) =
        check("postgres_url = \"postgres://hookd@db.internal/hookd\"\npostgres_ca_file = \"/nonexistent/ca.pem\"");
    assert!(
        !ok && shown.contains("history.postgres_ca_file") && shown.contains("/nonexistent/ca.pem"),
        "{shown}"
    );
}

/// `hookd send` hands deeply nested data to hookd, which refuses it naming
/// `ingest.max_depth` (not a client-side JSON recursion error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_refuses_deep_data_naming_the_limit() {
    let rx = Receiver::start().await;
    let hookd = Hookd::start(&rx, "").await;
    let data = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
    let sent = hookd.cli(&["send", "--type", "coupon.redeemed", "--data", &data]).await;
    let err = sent.failed();
    assert!(
        err.contains("400") && err.contains("1001 levels deep") && err.contains("ingest.max_depth"),
        "{err}"
    );
    hookd.stop().await;
}

/// Text logs written to a file carry no ANSI colour codes, and what came
/// from outside (a stream entry's field name) cannot start a line of its
/// own: control characters are escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_colour_and_no_forged_lines() {
    let redis = support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix("logs");
    let path = dir.path().join("hookd.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[queue]\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n",
            support::free_port(),
            redis.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("hookd.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("HOOKD_CONFIG")
        .env_remove("HOOKD_LOG")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("cannot run the hookd binary");
    let forged = "x\n2026-01-01T00:00:00.000000Z  INFO hookd: forged\r\u{1b}[2K";
    redis.command(&[
        "XADD",
        &format!("{prefix}:events"),
        "*",
        "type",
        "a.b",
        "data",
        "{}",
        forged,
        "1",
    ]);
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("malformed entry") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(text.contains("malformed entry"), "{text}");
    assert!(!text.contains('\u{1b}'), "no escape codes in a file:\n{text:?}");
    assert!(!text.contains('\r'), "{text:?}");
    assert!(
        text.lines()
            .all(|l| !l.contains("INFO hookd: forged") || l.contains("malformed entry")),
        "a forged line:\n{text}"
    );
    assert!(text.contains(r"x\n2026-01-01"), "the newline shown escaped:\n{text}");
}

/// Runs the real `hookd` binary with `args`, none of its environment
/// variables set.
async fn run_binary(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(args)
        .env_remove("HOOKD_URL")
        .env_remove("HOOKD_API_KEY")
        .env_remove("HOOKD_CONFIG")
        .env_remove("HOOKD_CA_FILE")
        .output()
        .await
        .expect("cannot run the hookd binary");
    Run {
        args: args.join(" "),
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

#[tokio::test]
async fn the_cli_talks_https_to_a_hookd_serving_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let toml = format!(
        "[server]\napi_keys = [\"{KEY}\"]\ntls_cert = {:?}\ntls_key = {:?}\n[queue]\ndata_dir = {:?}\n\
         [[subscriptions]]\nname = \"crm\"\nurl = \"https://crm.example.com/hooks\"\nevents = [\"coupon.*\"]\nsecrets = [\"{SECRET}\"]\n",
        cert.display().to_string(),
        key.display().to_string(),
        dir.path().join("data").display().to_string(),
    );
    let hookd = support::daemon::Hookd::start(Config::from_toml(&toml).unwrap()).await;
    let https = hookd.url.replacen("http://", "https://", 1);
    let ca = cert.display().to_string();

    // Trusting the certificate, the verbs work over HTTPS.
    let run = run_binary(&[
        "subscriptions",
        "crm",
        "--json",
        "--server",
        &https,
        "--api-key",
        KEY,
        "--ca-file",
        &ca,
    ])
    .await;
    let crm = run.json();
    assert_eq!(crm["url"], "https://crm.example.com/hooks", "{crm:#}");
    let run = run_binary(&[
        "send",
        "--type",
        "coupon.issued",
        "--data",
        "{\"n\":1}",
        "--server",
        &https,
        "--api-key",
        KEY,
        "--ca-file",
        &ca,
    ])
    .await;
    run.ok();

    // Without it, the certificate is refused, and the error says so.
    let run = run_binary(&["subscriptions", "--server", &https, "--api-key", KEY]).await;
    let stderr = run.failed();
    assert!(
        stderr.contains(&format!("cannot reach hookd at {https}/v1/subscriptions")) && stderr.contains("certificate"),
        "{stderr}"
    );
    // A CA file that is not one is named.
    let run = run_binary(&[
        "subscriptions",
        "--server",
        &https,
        "--api-key",
        KEY,
        "--ca-file",
        &key.display().to_string(),
    ])
    .await;
    let stderr = run.failed();
    assert!(
        stderr.starts_with(&format!(
            "error: --ca-file {}: it holds no `BEGIN CERTIFICATE` block",
            key.display()
        )),
        "{stderr}"
    );
    hookd.stop().await;
}

#[tokio::test]
async fn the_cli_reads_a_bounded_answer() {
    // Something at the URL answers 200 with a body past the client's limit,
    // as fast as it can write it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let _ = conn.read(&mut head).await;
                let total = hookd::api::client::MAX_ANSWER_BYTES + 1024;
                let mut out =
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {total}\r\n\r\n")
                        .into_bytes();
                out.push(b'[');
                out.resize(total + out.len() - 1, b' ');
                let _ = conn.write_all(&out).await;
            });
        }
    });
    let run = run_binary(&["subscriptions", "--server", &url, "--api-key", KEY]).await;
    let stderr = run.failed();
    assert!(
        stderr.starts_with(&format!(
            "error: hookd's answer from {url}/v1/subscriptions is over the client's limit of {} bytes",
            hookd::api::client::MAX_ANSWER_BYTES
        )),
        "{stderr}"
    );
    server.abort();
}
