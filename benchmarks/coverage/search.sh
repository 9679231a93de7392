#!/usr/bin/env bash
# The configuration search behind benchmarks/coverage/*.toml: one seed per line of
# search.txt (NAME DATASET DIVERGENCE CRITIC [fgm compare options]), two runs side by side
# with one thread each, results in $OUT/NAME/results.json and a line each in $OUT/search.txt.
#   bash benchmarks/coverage/search.sh [OUT]          (default: runs/coverage-search)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-runs/coverage-search}
mkdir -p "$OUT"
one() {
  name=$1; ds=$2; div=$3; critic=$4; shift 4
  fgm compare --divergences "$div" --critic "$critic" --dataset "$ds" --seeds 1 --threads 1 -q -k 10 \
    -o "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name: FAILED (see $OUT/$name.log)"; return; }
  python - "$OUT/$name/results.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
print(f"{sys.argv[2]}: modes {r['modes_captured']}/{r['modes_total']}, high-quality {100 * r['high_quality']:.1f}%, "
      f"{r['train_seconds']:.0f} s")
PY
}
export -f one
export OUT
grep -v '^#' "$HERE/search.txt" | xargs -P 2 -L 1 bash -c 'one "$@"' _ | tee -a "$OUT/search.txt"
