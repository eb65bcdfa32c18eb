#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (cargo nextest), the
# official Outpost TypeScript SDK driven against a real server, then the
# tenant portal driven in headless Chromium.
# Needs: the Rust toolchain, Node.js >= 20 with npm (registry access for the first run), Debian's
# chromium package (installed with apt-get when missing), and the back-end services that
# scripts/services.sh starts or checks (PostgreSQL, Redis, RabbitMQ, moto, the GCP Pub/Sub emulator).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/outrider/target}"

need() { command -v "$1" >/dev/null 2>&1 || { echo "test.sh: '$1' is required but not installed: $2" >&2; exit 1; }; }
need cargo "install Rust with rustup"
need node "install Node.js 20 or newer"
need npm "install npm (comes with Node.js)"
chromium_bin="${CHROMIUM:-$(command -v chromium || true)}"
if [ -z "$chromium_bin" ]; then
  echo "test.sh: installing Debian's chromium package for the portal's browser tests" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  chromium_bin="$(command -v chromium)"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

echo "== services (PostgreSQL, Redis, RabbitMQ, moto, Pub/Sub emulator)"
export OUTRIDER_SERVICES_DIR="${OUTRIDER_SERVICES_DIR:-$(mktemp -d)}"
trap 'bash scripts/services.sh down' EXIT
bash scripts/services.sh up
set -a; . "$OUTRIDER_SERVICES_DIR/env"; set +a

echo "== building"
cargo build --workspace --all-targets
echo "== rust tests (unit + integration)"
cargo nextest run --workspace --no-fail-fast
echo "== back-end restarts (alone and one at a time: they restart the shared PostgreSQL and RabbitMQ)"
cargo nextest run --workspace --no-fail-fast --run-ignored only -E 'test(/outage_/)'
echo "== official Outpost SDK against the server"
(cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)
OUTRIDER_BIN="$CARGO_TARGET_DIR/debug/outrider" node tests/sdk/sdk-compat.mjs
echo "== tenant portal in headless Chromium"
(cd tests/portal && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
CHROMIUM="$chromium_bin" PORTAL_SCREENSHOTS="${PORTAL_SCREENSHOTS:-$CARGO_TARGET_DIR/portal-screenshots}" \
  OUTRIDER_BIN="$CARGO_TARGET_DIR/debug/outrider" node tests/portal/portal.mjs
