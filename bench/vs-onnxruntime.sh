#!/usr/bin/env bash
# Exemplar's embedder against ONNX Runtime: same architecture, input and threads,
# measured in one run, in turns of half a second (bench/paired.py), repeated; prints
# each one's images/s and the ratio.
# Not part of the tests or CI (it downloads ONNX Runtime into its own venv once).
#
# Usage: bench/vs-onnxruntime.sh [--models "efficientnet-lite0 resnet50 resnet18"]
#        [--batches "1 8"] [--seconds 20] [--repeats 2] [--threads N] [--cold] [--with-candle]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EXEMPLAR_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/exemplar/bench-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import onnxruntime, onnx" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q onnxruntime==1.32.0 onnx==1.23.2 numpy
fi
cargo build --release --locked -p exemplar-server --bin exemplar
exec "$venv/bin/python" bench/vs_onnxruntime.py --exemplar target/release/exemplar "$@"
