//! Built plugins for the tests: `plugins/build.sh` runs once per test
//! binary when `plugins/dist` is missing or older than the plugin sources.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// Every plugin `build.sh` must produce.
const PLUGINS: &[&str] = &[
    "coupon-filter",
    "redactor",
    "slack",
    "jq",
    "reshape",
    "echo",
    "hostile-endless-loop",
    "hostile-memory-bomb",
    "hostile-panic",
    "hostile-protected-header",
    "hostile-garbage",
    "hostile-wrong-world",
    "hostile-sleep",
];

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The newest modification time of the files under `dir`, skipping build
/// outputs.
fn newest(dir: &Path) -> SystemTime {
    let mut latest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return latest;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "dist" {
            continue;
        }
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        latest = latest.max(time);
    }
    latest
}

/// `plugins/dist`, built first if missing or stale.
pub fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let plugins = repo().join("plugins");
        let dist = plugins.join("dist");
        let sources = newest(&plugins).max(newest(&repo().join("wit")));
        let stale = PLUGINS.iter().any(|name| {
            std::fs::metadata(dist.join(format!("{name}.wasm")))
                .and_then(|m| m.modified())
                .map_or(true, |built| built < sources)
        });
        if stale {
            let status = Command::new("sh")
                .arg(plugins.join("build.sh"))
                .status()
                .expect("run plugins/build.sh");
            assert!(status.success(), "plugins/build.sh failed");
        }
        dist
    })
}

/// The built plugin `name`.
pub fn wasm(name: &str) -> PathBuf {
    dist().join(format!("{name}.wasm"))
}

/// A cache shared by the tests (compiling jq once is enough).
pub fn shared_cache() -> PathBuf {
    repo().join("target").join("plugin-test-cache")
}
