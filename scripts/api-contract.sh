#!/usr/bin/env bash
# The OpenAPI document is the contract: schemathesis (every check) against the real
# binary on port 0 with a temp data dir. Usage: scripts/api-contract.sh [BINARY]
# (default target/debug/exemplar). Installs schemathesis into target/api-contract-venv
# from PyPI on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/exemplar}"
venv=target/api-contract-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi
data_dir="$(mktemp -d)"
log="$(mktemp)"
"$binary" serve --bind 127.0.0.1:0 --data-dir "$data_dir" --keep-unknown 5 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data_dir" "$log"' EXIT
for _ in $(seq 1 600); do
    url="$(sed -n 's/^listening on //p' "$log")"
    [ -n "$url" ] && break
    kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.5
done
[ -n "$url" ] || { echo "the server did not start" >&2; exit 1; }
"$venv/bin/schemathesis" --config-file tests/api/schemathesis.toml --no-color run \
    "$url/openapi.json" --workers 1
