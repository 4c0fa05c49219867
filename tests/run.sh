#!/usr/bin/env bash
# Runs hookd's whole test suite, installing what the tests need first:
# redis-server, postgresql, python3-aiosmtpd, python3-cryptography (the v1a
# interop check), chromium and chromium-driver (apt) and the wasm32-wasip2
# target (rustup) for the plugins.
#   bash tests/run.sh            # everything
#   bash tests/run.sh pipeline   # extra args go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }

if ! command -v redis-server >/dev/null 2>&1 || ! have_postgres || ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 \
  || ! /usr/bin/python3 -c 'import cryptography.hazmat.primitives.asymmetric.ed25519' >/dev/null 2>&1 \
  || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  say "installing redis-server, postgresql, python3-aiosmtpd, python3-cryptography, chromium and chromium-driver (apt)"
  as_root apt-get update -qq
  # Debian's python3 is externally managed (PEP 668): Python's cryptography
  # comes from apt like aiosmtpd, not pip.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server postgresql python3-aiosmtpd python3-cryptography chromium chromium-driver >/dev/null
  # The tests start their own servers on free ports; the packaged service is not needed.
  (as_root service redis-server stop || true) >/dev/null 2>&1
  (as_root service postgresql stop || true) >/dev/null 2>&1
fi

if [ -f plugins/build.sh ]; then
  say "building plugins (wasm32-wasip2)"
  bash plugins/build.sh
fi

say "format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

say "tests"
cargo test --all-targets "$@"
