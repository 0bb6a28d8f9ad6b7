#!/usr/bin/env bash
# Reproduces the accuracy figures of docs/benchmarks.md on the shared evaluation data (not part of the
# test suite: it needs ../shared/data and takes ~10 minutes on 2 cores).
#   tests/reference-figures.sh [DATA_DIR]      (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-../shared/data}
[ -d "$D/holidays" ] || { echo "no evaluation data at $D" >&2; exit 1; }
cargo build --release --locked -q -p exemplar-server --bin exemplar
X=target/release/exemplar
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
# The global-stage figures; the two-stage ones follow at the end.
run() { echo "== $*" >&2; "$X" "$@" --global-only --query-views none --feature-cache "$cache" 2>&1 | grep -E '\((256|1280)-d\)|distractors' >&2; }

echo "== ImageNet sanity photos" >&2
"$X" classify --manifest "$D/imagenet-sanity/manifest.tsv" --golden "$D/imagenet-sanity/golden-lite0.json" | grep -E "accepted|golden features" >&2
run eval "$D/holidays" --projection raw,default,random,catalogue
for w in 0 0.25 1; do run eval "$D/holidays" --projection catalogue --whitening "$w"; done
run eval "$D/smvs-dvd-dev" --projection raw,default,random
run eval "$D/smvs-dvd-dev" --projection raw,default,random,catalogue --distractors "$D/dvdcovers/references"
run eval "$D/smvs-dvd-dev" --projection raw,default,random,catalogue --distractors "$D/dvdcovers/references" --distractors "$D/holidays"
"$X" eval "$D/dvdcovers" --projection raw --global-only --query-views none --per-query 2>/dev/null | tail -1 | python3 -c '
import json, sys
r = json.load(sys.stdin)["results"][0]
for o in r["outcomes"]:
    print(f"dvdcovers {o[\"query\"]}: rank {o[\"rank\"]}, best {o[\"best\"]} ({o[\"best_score\"]:.3f})", file=sys.stderr)'

echo "== two stages: global shortlist + geometric verification" >&2
two() { echo "== $*" >&2; "$X" "$@" --feature-cache "$cache" 2>&1 | grep -E '\((256|1280)-d\)|same_item|distractors' >&2; }
two eval "$D/smvs-dvd-dev" --projection raw,catalogue --distractors "$D/dvdcovers/references" --distractors "$D/holidays/images" --query-views none
two eval "$D/smvs-dvd-dev" --projection raw,catalogue --distractors "$D/dvdcovers/references" --distractors "$D/holidays/images" --global-only
two eval "$D/smvs-dvd-dev" --projection raw,catalogue --distractors "$D/dvdcovers/references" --distractors "$D/holidays/images"
two eval "$D/dvdcovers" --projection raw,catalogue
two eval "$D/holidays" --projection raw,catalogue

echo "== verdict rules (exemplar calibrate)" >&2
"$X" calibrate "$D/smvs-dvd-dev" --projection catalogue --distractors "$D/dvdcovers/references" --distractors "$D/holidays/images" \
    --feature-cache "$cache" --inliers 15,20,25,30,40 --coverage 0,0.05,0.1,0.15,0.2 2>&1 | grep -E 'inliers>=' >&2
