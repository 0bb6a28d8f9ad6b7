#!/usr/bin/env bash
# Exemplar's nearest-neighbour index against hnswlib (PyPI, compiled for this CPU) on the
# same seeded clustered vectors, in one run: each library builds and queries in its own
# fresh process, in turns, repeated; prints each one's build time, memory per vector and
# queries/s at equal recall, and the ratios.
# Not part of the tests or CI (it installs hnswlib into its own venv once).
#
# Usage: bench/vs-hnswlib.sh [--points 100000] [--k 10] [--m 16] [--ef-construction 200]
#        [--ef 16,32,64,128,256] [--threads 2] [--repeats 3] [--recall 0.95]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EXEMPLAR_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/exemplar/bench-venv-hnswlib}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import hnswlib, numpy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q hnswlib==0.8.0 numpy
fi
cargo build --release --locked -p exemplar-server --bin exemplar
exec "$venv/bin/python" bench/vs_hnswlib.py --exemplar target/release/exemplar "$@"
