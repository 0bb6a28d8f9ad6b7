#!/usr/bin/env bash
# Checks that the fast engine's SIMD arithmetic is compiled inline, with AVX-512/AVX2
# enabled. Code reached through a helper the compiler leaves out of line (for example
# `core::array::from_fn`'s) is compiled without the target features, and each intrinsic
# becomes a call: ResNet-18 once ran at half speed after an unrelated change elsewhere.
# Needs `perf`. Usage: bench/simd-inlining.sh [EXEMPLAR_BINARY]
set -euo pipefail
bin=${1:-target/release/exemplar}
data=$(mktemp)
trap 'rm -f "$data"' EXIT
status=0
for spec in "efficientnet-lite0 1" "efficientnet-lite0 8" "resnet18 1" "resnet18 8" "resnet50 1"; do
  set -- $spec
  weights=""
  if [ "$1" != efficientnet-lite0 ]; then weights=--random-weights; fi
  perf record -q -o "$data" -F 1000 "$bin" bench --model "$1" $weights --batch "$2" --seconds 2 >/dev/null 2>&1
  # Out-of-line intrinsics show up as `core::core_arch::...` symbols, array helpers
  # as `try_trait::Wrapped`.
  share=$(perf report -i "$data" --sort symbol --stdio 2>/dev/null \
    | { grep -E 'core_arch|try_trait::Wrapped' || true; } | awk '{s += $1} END {print s + 0}')
  echo "$1 batch $2: ${share}% of samples in out-of-line intrinsics"
  if awk -v s="$share" 'BEGIN {exit !(s > 1)}'; then status=1; fi
done
exit $status
