//! Plugin call cost: a small JSON reshape through a warm instance (the jq
//! plugin and its plain-Rust twin `reshape`), and through a fresh instance
//! per call.
//!
//! Needs the plugins: runs `plugins/build.sh` if `plugins/dist` lacks them.
//! `cargo bench --bench plugin`

use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion};
use hookd::config::{Config, PluginConfig};
use hookd::plugin::{Input, Plugin, Plugins, Verdict};

const FILTER: &str = "select(.data.amount >= 10) | {id: .data.coupon, total: .data.amount}";

fn wasm(name: &str) -> PathBuf {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let path = plugins.join("dist").join(format!("{name}.wasm"));
    if !path.is_file() {
        let status = Command::new("sh")
            .arg(plugins.join("build.sh"))
            .status()
            .expect("run build.sh");
        assert!(status.success(), "plugins/build.sh failed");
    }
    path
}

fn load(plugins: &Plugins, name: &str, config: &[(&str, &str)], fresh: bool) -> Plugin {
    let cfg = PluginConfig {
        path: wasm(name),
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        deadline: None,
        memory_limit: None,
        fresh_instance: Some(fresh),
    };
    plugins.load(name, &cfg).expect("plugin loads")
}

fn input() -> Input {
    let event = hookd::ingest::parse_event(
        br#"{"type":"coupon.redeemed","id":"evt_1","data":{"coupon":"SPRING","amount":12,"store":"Lisbon"},"timestamp":"2026-11-23T10:00:00Z"}"#,
        hookd::ingest::DEFAULT_MAX_DEPTH,
    )
    .expect("valid event");
    Input {
        event_id: event.id.to_string(),
        event_type: event.event_type.clone(),
        timestamp: event.occurred_at.timestamp_millis(),
        body: event.body(),
        headers: vec![("content-type".into(), "application/json".into())],
    }
}

fn bench(c: &mut Criterion) {
    let mut settings = Config::from_toml("").expect("defaults are valid").plugins;
    settings.cache_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/plugin-bench-cache");
    let plugins = Plugins::new(&settings).expect("engine starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let input = input();
    let cases = [
        ("warm/reshape", load(&plugins, "reshape", &[], false)),
        ("warm/jq", load(&plugins, "jq", &[("filter", FILTER)], false)),
        ("fresh/reshape", load(&plugins, "reshape", &[], true)),
        ("fresh/jq", load(&plugins, "jq", &[("filter", FILTER)], true)),
    ];
    for (name, plugin) in &cases {
        let verdict = rt.block_on(plugin.transform(input.clone())).expect("transform works");
        assert!(
            matches!(&verdict, Verdict::Deliver { body: Some(b), .. } if &b[..] == br#"{"id":"SPRING","total":12}"#),
            "{name}: {verdict:?}"
        );
        c.bench_function(name, |b| {
            b.iter(|| rt.block_on(plugin.transform(input.clone())).expect("transform works"))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
