#!/usr/bin/env bash
# Against a running `exemplar serve`: one class per cover of ../shared/data/dvdcovers
# (label = file name without extension), then a search with each of its 7 phone photos.
# Prints the import rate and each photo's best class and verdict. Bounded: 265 + 7 requests.
#   tests/dvdcovers-demo.sh [BASE_URL] [DATA_DIR]
set -euo pipefail
base=${1:-http://127.0.0.1:8080}
data=${2:-../shared/data/dvdcovers}
start=$(date +%s.%N)
n=0
for f in "$data"/references/*; do
  label=$(basename "${f%.*}")
  code=$(curl -s -o /dev/null -w '%{http_code}' -F "label=$label" -F "image=@$f" "$base/classes")
  [ "$code" = 201 ] || echo "import $f: HTTP $code" >&2
  n=$((n + 1))
done
end=$(date +%s.%N)
echo "imported $n covers in $(echo "$end - $start" | bc) s ($(echo "scale=2; $n / ($end - $start)" | bc) images/s)"
# An empty reference (item not in the catalogue) becomes "-" so `read` keeps the columns.
awk -F'\t' 'NR > 1 { print $1 "\t" ($2 == "" ? "-" : $2) }' "$data/groundtruth.tsv" | while IFS=$'\t' read -r query reference; do
  curl -s -F "image=@$data/$query" -F k=5 "$base/search" | python3 -c '
import json, sys
q, ref = sys.argv[1], sys.argv[2] if sys.argv[2] != "-" else "(not in catalogue)"
a = json.load(sys.stdin)
best = a["classes"][0] if a["classes"] else {"label": None, "score": 0.0}
print("%s: expected %s; best %s (%.3f); verdict %s" % (q, ref, best["label"], best["score"], a["verdict"]["status"]))
' "$query" "$reference"
done
