#!/usr/bin/env bash
# CI for the Angular integration (clients/angular): install, build the library and the example,
# check the example's files, then the unit tests (Angular's `ng test`, Vitest) and the browser
# tests (the built example in headless Chromium against a real server and PostgreSQL).
# Assumes `cargo build` ran (target/debug/citas-realtime, or CITAS_REALTIME_BIN) and that
# Chromium (/usr/bin/chromium or CHROMIUM_PATH), psql and PostgreSQL's server binaries are here.
# Runs from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

echo "== Angular: npm ci"
npm ci --no-audit --no-fund

echo "== Angular: build the library and the example (first the TypeScript client's dist, when stale)"
npm run build
if [ ! -f dist/example/browser/index.html ]; then
  echo "dist/example/browser/index.html is missing after the build" >&2
  exit 1
fi

echo "== Angular: unit tests, then the example in headless Chromium"
npm test
