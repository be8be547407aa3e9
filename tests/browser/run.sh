#!/usr/bin/env bash
# Runs the browser tests of the web UI: builds herald, installs
# playwright-core from the lock file, and drives /usr/bin/chromium against
# `herald serve --demo` on a random port. Screenshots: tests/browser/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
repo="$(cd ../.. && pwd)"
cargo build --quiet -p herald --manifest-path "$repo/Cargo.toml"
export HERALD_BIN="${HERALD_BIN:-$repo/target/debug/herald}"
npm ci --no-audit --no-fund --silent
node --test --test-concurrency=1 ui.test.mjs
