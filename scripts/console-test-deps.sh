#!/usr/bin/env bash
# What the web console's end-to-end tests need: a Chromium (Debian's `chromium` package,
# installed here when missing and run as root; or EXEMPLAR_CHROMIUM naming one) and
# playwright-core from the npm registry, at the version package-lock.json pins.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${EXEMPLAR_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's chromium for the console tests" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "the console tests need Chromium: apt-get install chromium, or set EXEMPLAR_CHROMIUM" >&2
        exit 1
    fi
fi
command -v npm >/dev/null || { echo "the console tests need Node.js 20+ with npm" >&2; exit 1; }
npm ci --prefix crates/exemplar-server/tests/console --no-audit --no-fund --loglevel=error
